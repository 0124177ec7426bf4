"""RevNet-50 (Gomez et al. 2017) in the ResNet-50 layout, as blocks B1..B5.

Each resolution group of [3, 4, 6, 3] units starts with an ordinary (non-reversible) bottleneck that
changes the resolution and channel count; the rest are reversible units: the channels split into halves
(x1, x2) and
    y1 = x1 + F(x2),   y2 = x2 + G(y1)
so the input is recovered exactly from the output (x2 = y2 - G(y1), x1 = y1 - F(x2)). F and G are
pre-activation bottlenecks (BN-ReLU-conv 1x1, 3x3, 1x1) on C/2 channels. The stem is ResNet-50's.

The reversible units of a group run as one `ReversibleSequence`. With `recompute` (the default) training keeps
only the group's output: the backward pass rebuilds each unit's input from its output and back-propagates
through F and G recomputed from there (Gomez et al.'s algorithm), so the group's activation memory does not grow
with its depth, at the cost of about one more forward pass of the group.
"""

import keras
from keras import layers, ops

from psl_keras.backbones.resnet import BN_EPSILON, BN_MOMENTUM, BlockBuilder, chain_blocks, scaled, stem_block

REVNET_REPEATS = (3, 4, 6, 3)


@keras.saving.register_keras_serializable(package="psl_keras")
class ReversibleBottleneck(layers.Layer):
    """A reversible residual unit on `channels` channels with bottleneck width `bottleneck` in F and G."""

    def __init__(self, channels, bottleneck, sync_bn=False, **kwargs):
        # The residual stream (x1, x2, y1, y2) stays in the variables' precision under mixed precision, so the
        # input is recovered from the output exactly; F and G compute in the global policy's precision.
        kwargs.setdefault("dtype", keras.config.dtype_policy().variable_dtype)
        super().__init__(**kwargs)
        if channels % 2:
            raise ValueError(f"A reversible unit needs an even channel count, got {channels}.")
        self.channels = int(channels)
        self.bottleneck = int(bottleneck)
        self.sync_bn = bool(sync_bn)
        self.f = self._residual_function("f")
        self.g = self._residual_function("g")

    def _residual_function(self, prefix):
        half = self.channels // 2
        stack = []
        for i, (filters, kernel) in enumerate(((self.bottleneck, 1), (self.bottleneck, 3), (half, 1))):
            stack += [
                layers.BatchNormalization(
                    epsilon=BN_EPSILON, momentum=BN_MOMENTUM, synchronized=self.sync_bn, name=f"{prefix}_bn{i + 1}"
                ),
                layers.Activation("relu", name=f"{prefix}_relu{i + 1}"),
                layers.Conv2D(filters, kernel, padding="same", use_bias=False, kernel_initializer="he_normal",
                              name=f"{prefix}_conv{i + 1}"),
            ]
        return stack

    def build(self, input_shape):
        half_shape = tuple(input_shape[:-1]) + (self.channels // 2,)
        for stack in (self.f, self.g):
            shape = half_shape
            for layer in stack:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)

    @staticmethod
    def _run(stack, x, training):
        for layer in stack:
            x = layer(x, training=training) if isinstance(layer, layers.BatchNormalization) else layer(x)
        return x

    @classmethod
    def residual(cls, stack, x, training):
        """F or G at x, in x's precision."""
        return ops.cast(cls._run(stack, x, training), x.dtype)

    def call(self, inputs, training=None):
        x1, x2 = ops.split(inputs, 2, axis=-1)
        y1 = x1 + self.residual(self.f, x2, training)
        y2 = x2 + self.residual(self.g, y1, training)
        return ops.concatenate([y1, y2], axis=-1)

    def inverse(self, outputs, training=False):
        """Reconstructs the unit's input from its output."""
        y1, y2 = ops.split(outputs, 2, axis=-1)
        x2 = y2 - self.residual(self.g, y1, training)
        x1 = y1 - self.residual(self.f, x2, training)
        return ops.concatenate([x1, x2], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, bottleneck=self.bottleneck, sync_bn=self.sync_bn)
        return config


def _vjp(fn, *primals):
    """(fn(*primals), the function from the output's gradient to the primals' gradients), on Keras's backend."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.vjp(fn, *primals)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(primals)
        out = fn(*primals)
    return out, lambda d_out: tape.gradient(out, primals, output_gradients=d_out,
                                            unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _run_in_scope(stack, x, training, variables, values):
    """`stack` applied to `x` with `variables` taking `values` (functional in the values, for differentiation)."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        return ReversibleBottleneck.residual(stack, x, training)


@keras.saving.register_keras_serializable(package="psl_keras")
class ReversibleSequence(layers.Layer):
    """`depth` reversible units applied in order. With `recompute` the backward pass keeps only the output and
    rebuilds every unit's input from it; without, it stores activations as any layer does. Both give the same
    gradients and the same BatchNorm statistics."""

    def __init__(self, channels, bottleneck, depth, sync_bn=False, recompute=True, **kwargs):
        # Weights enter the recomputation as float32 values, each unit casts them for mixed precision itself; the
        # residual stream stays in the variables' precision (see ReversibleBottleneck).
        kwargs.setdefault("dtype", keras.config.dtype_policy().variable_dtype)
        super().__init__(autocast=False, **kwargs)
        self.channels, self.bottleneck, self.depth = int(channels), int(bottleneck), int(depth)
        self.sync_bn, self.recompute = bool(sync_bn), bool(recompute)
        self.units = [ReversibleBottleneck(channels, bottleneck, sync_bn=sync_bn, name=f"rev{i + 2}")
                      for i in range(self.depth)]

    def build(self, input_shape):
        for unit in self.units:
            unit.build(input_shape)

    def call(self, inputs, training=None):
        if not self.recompute or not self.depth:
            for unit in self.units:
                inputs = unit(inputs, training=training)
            return inputs
        training = bool(training)
        trainable = [v for unit in self.units for v in unit.trainable_weights]
        fixed = [v for unit in self.units for v in unit.non_trainable_weights]
        outputs, updates = self._reversible(training, trainable, fixed)(
            inputs, *[v.value for v in trainable], *[v.value for v in fixed])
        if training:  # the BatchNorm statistics the forward pass computed, applied once
            for variable, value in zip(fixed, updates):
                variable.assign(ops.stop_gradient(value))
        return outputs

    def _reversible(self, training, trainable, fixed):
        """The group as one function of (inputs, *trainable values, *fixed values) whose gradient recomputes."""
        variables = trainable + fixed
        count = len(trainable)

        @ops.custom_gradient
        def forward(inputs, *values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                outputs = inputs
                for unit in self.units:
                    outputs = unit(outputs, training=training)
                updates = [scope.get_current_value(v) for v in fixed]

            def backward(*upstream):
                # The first upstream gradient is the outputs' (the statistics' are ignored: not differentiable).
                y, dy = outputs, keras.tree.flatten(upstream)[0]
                grads = {}
                for unit in reversed(self.units):
                    y, dy = self._unit_backward(unit, y, dy, training, variables, values, grads)
                weight_grads = [grads.get(id(v), None) for v in trainable]
                weight_grads = [ops.zeros_like(values[i]) if g is None else g for i, g in enumerate(weight_grads)]
                return (dy, *weight_grads, *[ops.zeros_like(v) for v in values[count:]])

            return (outputs, updates), backward

        return forward

    @staticmethod
    def _unit_backward(unit, y, dy, training, variables, values, grads):
        """One unit of the reversible backward pass: (its output, the output's gradient) -> (its input, the
        input's gradient); puts its weights' gradients in `grads` (by variable id)."""
        value_of = {id(v): value for v, value in zip(variables, values)}

        def residual_vjp(stack, x):
            """F or G at x, and the function from its output's gradient to (x's, its weights') gradients."""
            weights = [v for layer in stack for v in layer.weights]
            trained = [v for v in weights if v.trainable]
            fixed = [value_of[id(v)] for v in weights if not v.trainable]

            def residual(x, *trained_values):
                return _run_in_scope(stack, x, training, trained + [v for v in weights if not v.trainable],
                                     list(trained_values) + fixed)

            out, vjp = _vjp(residual, x, *[value_of[id(v)] for v in trained])

            def backward(d_out):
                d_x, *d_weights = vjp(d_out)
                grads.update({id(v): g for v, g in zip(trained, d_weights)})
                return d_x

            return out, backward

        y1, y2 = ops.split(y, 2, axis=-1)
        dy1, dy2 = ops.split(dy, 2, axis=-1)
        g_out, g_backward = residual_vjp(unit.g, y1)  # y2 = x2 + G(y1)
        x2 = y2 - g_out
        dz1 = dy1 + g_backward(dy2)  # y1's gradient: its own plus G's path into y2
        f_out, f_backward = residual_vjp(unit.f, x2)  # y1 = x1 + F(x2)
        x1 = y1 - f_out
        dx2 = dy2 + f_backward(dz1)
        return ops.concatenate([x1, x2], axis=-1), ops.concatenate([dz1, dx2], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward_macs(self, input_shape):
        """Multiply-adds of one forward pass for one example of `input_shape` (H, W, C)."""
        h, w = input_shape[0], input_shape[1]
        half, inner = self.channels // 2, self.bottleneck
        return 2 * self.depth * h * w * (half * inner + 9 * inner * inner + inner * half)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, bottleneck=self.bottleneck, depth=self.depth, sync_bn=self.sync_bn,
                      recompute=self.recompute)
        return config


def revnet(depth=50, image_size=224, stem="imagenet", width=1.0, conv_bias=True, sync_bn=False,
           bottleneck_ratio=0.2, recompute=True, name=None):
    """RevNet-50 backbone returning {"B1": ..., "B5": ...}; `width` 4 gives the RevNet-50 x4 of Table 4.
    `recompute`: the memory-saving backward pass of the reversible units (see `ReversibleSequence`).

    `bottleneck_ratio` is the inner width of F and G relative to the unit's channel count C. The default
    C/5 gives 24.4M parameters, the 24M of the paper's Table 4; Gomez et al.'s proportions (C/8, a ResNet
    bottleneck on each half) give 15.8M, the inner width of the replaced ResNet bottleneck (C/4) 31.8M.
    """
    if depth != 50:
        raise ValueError(f"Only RevNet-50 is provided, got depth {depth}.")
    builder = BlockBuilder(conv_bias=conv_bias, sync_bn=sync_bn)
    blocks = [stem_block(builder, stem, width)]
    channels = scaled(64, width)
    for i, (repeats, base) in enumerate(zip(REVNET_REPEATS, (64, 128, 256, 512))):
        index = i + 2
        filters = scaled(base, width)
        inputs = keras.Input((None, None, channels), name=f"B{index}_input")
        x = inputs
        if index == 2 and stem == "imagenet":
            x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
            x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        # Non-reversible down-sampling unit: new resolution and channel count.
        x = builder.bottleneck(x, filters, 1 if index == 2 else 2, conv_shortcut=True, name=f"conv{index}_block1")
        channels = 4 * filters
        inner = max(4, int(round(channels * bottleneck_ratio)))
        x = ReversibleSequence(channels, inner, repeats - 1, sync_bn=sync_bn, recompute=recompute,
                               name=f"conv{index}_rev")(x)
        blocks.append(keras.Model(inputs, x, name=f"B{index}"))
    return chain_blocks(blocks, image_size, name or "revnet50")
