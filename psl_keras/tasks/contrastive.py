"""What the contrastive tasks (SimCLR, MoCo v2) share: two views per image from a ladder T1 ⊆ T2 ⊆ T3 (PSL
§3.3.3, Table 3), a siamese pass of both views through the stage's blocks, and an MLP projection head.

Level i of the task is "tell the views of one image from the others' when the views differ by T_i": the
harder the augmentation, the more invariant (and semantic) the features must be.

Input pipeline (`psl_keras.data.augment`): `sample` draws every random choice of both views from the example's
seed, `prepare` crops them (per example in tf.data, on the batch on the device) and `finish` does the colour,
blur and Sobel work on the whole batch of views. The model sees views [B, 2, H, W, 3], float32 in [0, 1].
"""

import math

import keras
from keras import layers, ops, tree

from psl_keras.data import transforms
from psl_keras.data.augment import simclr_ladder
from psl_keras.lazy import tf
from psl_keras.ranges import fraction, non_negative, positive_int
from psl_keras.tasks.base import Task


def _views_first(tensors):
    """[B, 2, ...] -> [2B, ...]: rows 2k and 2k + 1 are image k's views."""
    return tree.map_structure(lambda t: ops.reshape(t, (-1, *t.shape[2:])), tensors)


def _pairs(views):
    """[2B, ...] -> [B, 2, ...]."""
    return ops.reshape(views, (-1, 2, *views.shape[1:]))


class ContrastiveTask(Task):
    """Base of the two-view tasks; subclasses set `name`, `crop_area`, `default_strength` and the objective."""

    num_levels = 3
    has_labels = False
    crop_area = (0.08, 1.0)
    OPTIONS = {
        "temperature": (0.0, "Softmax temperature of the contrastive loss (0: the task's default).", non_negative()),
        "projection_dim": (128, "Output size of the projection head.", positive_int()),
        "strength": (0.0, "Colour-jitter strength s (0: the task's default for the image size).", non_negative()),
        "blur_rate": (0.5, "Probability of the Gaussian blur in T3.", fraction()),
        "sobel_rate": (0.2, "Probability of Sobel filtering in T3.", fraction()),
    }

    def __init__(self, image_size, head_hidden=256, sync_bn=False, temperature=None, projection_dim=128,
                 strength=None, blur_rate=0.5, sobel_rate=0.2):
        super().__init__(image_size, head_hidden, sync_bn)
        self.temperature = float(temperature or self.default_temperature())
        self.projection_dim = int(projection_dim)
        self.strength = float(strength or self.default_strength())
        self.blur_rate = float(blur_rate)
        self.sobel_rate = float(sobel_rate)
        if self.temperature <= 0 or self.projection_dim < 1 or self.strength <= 0:
            raise ValueError("temperature, projection_dim and strength must be positive.")
        if not (0 <= self.blur_rate <= 1 and 0 <= self.sobel_rate <= 1):
            raise ValueError("blur_rate and sobel_rate are probabilities in [0, 1].")
        self._ladder = None

    def default_temperature(self):
        raise NotImplementedError

    def default_strength(self):
        # SimCLR: strength 0.5 on CIFAR-10, 1.0 on ImageNet.
        return 0.5 if self.image_size <= 64 else 1.0

    def num_classes(self, level):
        raise NotImplementedError(f"{self.name} has no classes: it contrasts views.")

    def chance_accuracy(self, level):
        return None  # the candidates a positive is found among depend on the batch (and the queue)

    def describe_level(self, level):
        return f"{self.name} T{level} = {self.ladder.describe(level)}"

    # --- data -----------------------------------------------------------------------------------------
    @property
    def ladder(self):
        if self._ladder is None:
            self._ladder = simclr_ladder(self.image_size, self.strength, self.crop_area, self.blur_rate,
                                         self.sobel_rate)
        return self._ladder

    def sample(self, seed, level, image_shape):
        """Both views' choices (each parameter [2, ...]), from one draw of the example's seed."""
        u = transforms.uniform(seed, [2, self.ladder.uniforms(level)])
        views = [self.ladder.sample(u[i], level, image_shape) for i in (0, 1)]
        return tree.map_structure(lambda *p: ops.stack(p), *views)

    def prepare(self, images, params, level):
        """Both crops of each image: views [B, 2, size, size, 3], and dummy labels 0."""
        crops = self.ladder.crop(ops.repeat(images, 2, axis=0), _views_first(params))
        return _pairs(crops), ops.zeros(ops.shape(images)[:1], "int32")

    def finish(self, inputs, params, level):
        return _pairs(self.ladder.augment(_views_first(inputs), _views_first(params), level))

    def backbone_images(self, inputs):
        """Views [B, 2, H, W, 3] -> [2B, H, W, 3], the two views of an image next to each other."""
        return ops.reshape(inputs, (-1, *inputs.shape[2:]))  # static sizes kept where known

    # --- network --------------------------------------------------------------------------------------
    def build_head(self, level, feature_channels, name):
        """SimCLR's projection g: pool, Dense(head_hidden) + BN + ReLU, Dense(projection_dim)."""
        features = keras.Input((None, None, feature_channels), name=f"{name}_features")
        x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        x = layers.Dense(self.head_hidden, use_bias=False, name=f"{name}_hidden")(x)
        x = layers.BatchNormalization(synchronized=self.sync_bn, name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        projection = layers.Dense(self.projection_dim, dtype="float32", name=f"{name}_projection")(x)
        return keras.Model(features, projection, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, projection_dim=self.projection_dim, strength=self.strength,
                      blur_rate=self.blur_rate, sobel_rate=self.sobel_rate)
        return config


def _tf(variable):
    """The TensorFlow variable under a Keras variable (what `assign` needs inside `extended.update`)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _unsynchronised(layer):
    """A fresh copy of `layer` (for `clone_model`), with BatchNorm never synchronised across replicas."""
    config = layer.get_config()
    if isinstance(layer, layers.BatchNormalization):
        config["synchronized"] = False
    return layer.__class__.from_config(config)


class MomentumEncoder(layers.Layer):
    """A momentum copy of one stage's trained blocks and `head` (MoCo's key encoder, BYOL's target network)
    that follows them by k <- m k + (1 - m) q after every step, normalises with batch statistics over
    `shuffle_groups` shuffled groups (shuffle BN), and with `queue_size` > 0 keeps a queue of its past outputs
    (MoCo's negatives). Part of the stage's checkpoint; both backends (see `update`)."""

    def __init__(self, trained_blocks, head, momentum, shuffle_groups, seed, queue_size=0, **kwargs):
        super().__init__(**kwargs)
        self.query_layers = list(trained_blocks) + [head]
        self.key_blocks = [keras.models.clone_model(b, clone_function=_unsynchronised) for b in trained_blocks]
        # One attribute per block as well: TensorFlow checkpoints follow a layer's attributes, not its lists.
        for i, block in enumerate(self.key_blocks):
            setattr(self, f"key_block_{i}", block)
        self.key_head = keras.models.clone_model(head, clone_function=_unsynchronised)
        self.momentum = float(momentum)
        self.shuffle_groups = int(shuffle_groups)
        self.seed = int(seed)
        for key, query in zip(self.key_layers, self.query_layers):
            key.set_weights(query.get_weights())
            # Nothing differentiates the key encoder, but its layers stay trainable: a Keras 3 BatchNormalization
            # whose layer is not trainable runs in inference mode, and the keys need batch statistics.
            for variable in key.weights:
                variable.trainable = False
        self.queue = self.queue_pointer = None
        if queue_size:
            dim = head.output.shape[-1]
            start = keras.random.normal((queue_size, dim), seed=self.seed)
            start = start / ops.sqrt(ops.sum(ops.square(start), axis=1, keepdims=True))
            self.queue = self.add_weight(shape=(queue_size, dim), initializer=lambda shape, dtype=None: start,
                                         trainable=False, name="queue")
            self.queue_pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                                 name="queue_pointer")
        self.steps = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="steps")

    @property
    def key_layers(self):
        return self.key_blocks + [self.key_head]

    def weight_pairs(self):
        """(key variable, query variable) for every weight of the stage's trained blocks and head."""
        pairs = []
        for key, query in zip(self.key_layers, self.query_layers):
            for k, q in zip(key.weights, query.weights):
                if k.shape != q.shape or k.path.split("/")[-1] != q.path.split("/")[-1]:
                    raise RuntimeError(f"Key encoder weight {k.path} does not mirror {q.path}.")
                pairs.append((k, q))
        return pairs

    def shuffle_order(self, count):
        """A permutation of the `count` keys, new every step and the same on every replica (a function of the
        stage's seed and step count): the order in which they are cut into BatchNorm groups."""
        index = ops.arange(count, dtype="float32") + 1.0
        step = ops.cast(ops.mod(self.steps, 65521), "float32")
        noise = ops.sin(index * 12.9898 + step * 78.233 + float(self.seed % 997) * 37.719) * 43758.5453
        return ops.argsort(noise - ops.floor(noise))

    def keys(self, features):
        """Normalised keys of key-view features [n, h, w, c], BatchNorm over shuffled groups; no gradient."""
        count = features.shape[0]
        groups = math.gcd(count, self.shuffle_groups) if count else 1
        order = self.shuffle_order(count) if groups > 1 else ops.arange(count)
        outputs = []
        for part in ops.split(ops.take(features, order, axis=0), groups):
            x = part
            for block in self.key_blocks:
                x = block(x, training=True)
            outputs.append(self.key_head(x, training=True))
        keys = ops.take(ops.concatenate(outputs, axis=0), ops.argsort(order), axis=0)  # back in image order
        keys = ops.cast(keys, "float32")
        keys = keys / ops.sqrt(ops.maximum(ops.sum(ops.square(keys), axis=1, keepdims=True), 1e-24))
        return ops.stop_gradient(keys)

    def update(self, keys=None):
        """After the optimizer step: momentum update of the key encoder, then (with a queue) the keys of every
        replica replace the oldest entries of the queue. Runs in a replica context (or none) under TensorFlow;
        under Keras on JAX its assignments are collected by the JAX step."""
        # Trained weights only: the key encoder's BatchNorm uses batch statistics, never its moving ones.
        pairs = [(k, q) for k, q in self.weight_pairs() if q.trainable]
        momentum = self.momentum
        size = self.queue.shape[0] if self.queue is not None else 0
        if keras.backend.backend() != "tensorflow":  # Keras on JAX: one process, one global batch
            for key_var, query_var in pairs:
                key_var.assign(momentum * key_var.value + (1.0 - momentum) * query_var.value)
            if not size:
                self.steps.assign(self.steps.value + 1)
                return
            count = keys.shape[0]
            slots = ops.mod(self.queue_pointer.value + ops.arange(count, dtype="int32"), size)
            self.queue.assign(ops.scatter_update(self.queue.value, slots[:, None], ops.cast(keys, self.queue.dtype)))
            self.queue_pointer.assign(ops.mod(self.queue_pointer.value + count, size))
            self.steps.assign(self.steps.value + 1)
            return

        from psl_keras.distribute import gather_replicas

        gathered = gather_replicas(keys)[0] if size else None

        def apply(strategy, gathered):
            # Cross-replica context: `extended.update` runs each assignment on every device's copy, as
            # Keras' optimizer does for its own updates.
            extended = strategy.extended
            for key_var, query_var in pairs:
                extended.update(_tf(key_var), lambda k, q: k.assign(momentum * k + (1.0 - momentum) * q),
                                args=(_tf(query_var),), group=False)

            def enqueue(queue, pointer, new):
                slots = (pointer + tf.range(tf.shape(new)[0])) % size
                return queue.assign(tf.tensor_scatter_nd_update(queue, slots[:, tf.newaxis], new))

            if size:
                count = tf.shape(gathered if not hasattr(gathered, "values") else gathered.values[0])[0]
                extended.update(_tf(self.queue), enqueue, args=(_tf(self.queue_pointer), gathered), group=False)
                extended.update(_tf(self.queue_pointer), lambda p: p.assign((p + count) % size), group=False)
            extended.update(_tf(self.steps), lambda s: s.assign_add(1), group=False)

        tf.distribute.get_replica_context().merge_call(apply, args=(gathered,))
