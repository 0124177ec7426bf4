"""RevNet-50 (Gomez et al. 2017) in the ResNet-50 layout, as blocks B1..B5.

Each resolution group of [3, 4, 6, 3] units starts with an ordinary (non-reversible) bottleneck that
changes the resolution and channel count; the rest are reversible units: the channels split into halves
(x1, x2) and
    y1 = x1 + F(x2),   y2 = x2 + G(y1)
so the input is recovered exactly from the output (x2 = y2 - G(y1), x1 = y1 - F(x2)). F and G are
pre-activation bottlenecks (BN-ReLU-conv 1x1, 3x3, 1x1) on C/2 channels. The stem is ResNet-50's.
Back-propagation stores activations as usual; the reversible memory saving is not implemented.
"""

import keras
from keras import layers, ops

from psl_keras.backbones.resnet import BN_EPSILON, BN_MOMENTUM, BlockBuilder, chain_blocks, scaled, stem_block

REVNET_REPEATS = (3, 4, 6, 3)


@keras.saving.register_keras_serializable(package="psl_keras")
class ReversibleBottleneck(layers.Layer):
    """A reversible residual unit on `channels` channels with bottleneck width `bottleneck` in F and G."""

    def __init__(self, channels, bottleneck, sync_bn=False, **kwargs):
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

    def call(self, inputs, training=None):
        x1, x2 = ops.split(inputs, 2, axis=-1)
        y1 = x1 + self._run(self.f, x2, training)
        y2 = x2 + self._run(self.g, y1, training)
        return ops.concatenate([y1, y2], axis=-1)

    def inverse(self, outputs, training=False):
        """Reconstructs the unit's input from its output."""
        y1, y2 = ops.split(outputs, 2, axis=-1)
        x2 = y2 - self._run(self.g, y1, training)
        x1 = y1 - self._run(self.f, x2, training)
        return ops.concatenate([x1, x2], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, bottleneck=self.bottleneck, sync_bn=self.sync_bn)
        return config


def revnet(depth=50, image_size=224, stem="imagenet", width=1.0, conv_bias=True, sync_bn=False,
           bottleneck_ratio=0.2, name=None):
    """RevNet-50 backbone returning {"B1": ..., "B5": ...}; `width` 4 gives the RevNet-50 x4 of Table 4.

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
        for r in range(1, repeats):
            x = ReversibleBottleneck(channels, inner, sync_bn=sync_bn, name=f"conv{index}_rev{r + 1}")(x)
        blocks.append(keras.Model(inputs, x, name=f"B{index}"))
    return chain_blocks(blocks, image_size, name or "revnet50")
