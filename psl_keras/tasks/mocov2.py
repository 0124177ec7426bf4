"""MoCo v2 with PSL (He et al. 2020, Chen et al. 2020; PSL §4.4 applies the ladder to MoCo v2's augmentation).

Per stage: the query encoder is the stage's blocks and head; the key encoder is a momentum copy of the same
(the frozen blocks before the window are shared: they do not change). The query of view 1 must pick the key of
view 2 among the keys of earlier batches held in a queue: InfoNCE at temperature 0.2 over 1 + queue_size
logits. After every step the key encoder moves towards the query encoder (k <- m k + (1 - m) q) and the
batch's keys (gathered from every replica) replace the oldest in the queue.

Stage boundaries. Each stage starts a new key encoder, copied from the query encoder (MoCo's own starting
rule; its trained window differs from the previous stage's), and a new queue of random unit vectors (MoCo's
start): the old queue holds projections by the previous stage's head g_{i-1}, another space than g_i's, so
they would be meaningless negatives. Key encoder and queue belong to the stage's checkpoint, so a run resumed
mid-stage continues with the same ones.

Shuffle BN. The key encoder runs BatchNorm on batch statistics, like MoCo. If a query and its key were
normalised over the same images, BatchNorm would leak which key belongs to which query; MoCo shuffles the
key batch across GPUs. Here each replica splits its key batch, in a random order, into `shuffle_groups`
groups that are normalised separately, which breaks the correspondence on one device as well. The key
encoder's BatchNorm is never synchronised across replicas, whatever --sync_bn says.

Both backends. The keys are `keras.ops`; the update after each step runs each assignment on every replica's
copy under tf.distribute, and is plain variable assignment under Keras on JAX, where the JAX step collects the
new values (`jax_step.JaxStageStep`).
"""

import math

import keras
from keras import layers, ops

from psl_keras.errors import PSLError
from psl_keras.lazy import tf
from psl_keras.ranges import fraction, non_negative_int, positive_int
from psl_keras.tasks.contrastive import ContrastiveTask


def info_nce(queries, keys, queue, temperature):
    """MoCo's InfoNCE: each query [n, d] against its own key [n, d] and the queue's negatives [K, d] (all
    L2-normalised here). Returns (loss [n], 1.0 where the own key ranks first [n])."""
    q = ops.cast(queries, "float32")
    q = q / ops.sqrt(ops.maximum(ops.sum(ops.square(q), axis=1, keepdims=True), 1e-24))
    positive = ops.sum(q * keys, axis=1, keepdims=True)
    negative = ops.matmul(q, ops.transpose(queue))
    logits = ops.concatenate([positive, negative], axis=1) / temperature
    labels = ops.zeros((ops.shape(q)[0],), "int32")
    losses = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=1), "int32"), labels), "float32")
    return losses, correct


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
    """The key encoder of one stage (copies of its trained blocks and head) and the queue of negatives."""

    def __init__(self, trained_blocks, head, queue_size, momentum, shuffle_groups, seed, **kwargs):
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

    def update(self, keys):
        """After the optimizer step: momentum update of the key encoder, then the keys of every replica
        replace the oldest entries of the queue. Runs in a replica context (or none) under TensorFlow."""
        # Trained weights only: the key encoder's BatchNorm uses batch statistics, never its moving ones.
        pairs = [(k, q) for k, q in self.weight_pairs() if q.trainable]
        momentum, size = self.momentum, self.queue.shape[0]
        if keras.backend.backend() != "tensorflow":  # Keras on JAX: one process, one global batch
            for key_var, query_var in pairs:
                key_var.assign(momentum * key_var.value + (1.0 - momentum) * query_var.value)
            count = keys.shape[0]
            slots = ops.mod(self.queue_pointer.value + ops.arange(count, dtype="int32"), size)
            self.queue.assign(ops.scatter_update(self.queue.value, slots[:, None], ops.cast(keys, self.queue.dtype)))
            self.queue_pointer.assign(ops.mod(self.queue_pointer.value + count, size))
            self.steps.assign(self.steps.value + 1)
            return

        from psl_keras.distribute import gather_replicas

        gathered, _ = gather_replicas(keys)

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

            count = tf.shape(gathered if not hasattr(gathered, "values") else gathered.values[0])[0]
            extended.update(_tf(self.queue), enqueue, args=(_tf(self.queue_pointer), gathered), group=False)
            extended.update(_tf(self.queue_pointer), lambda p: p.assign((p + count) % size), group=False)
            extended.update(_tf(self.steps), lambda s: s.assign_add(1), group=False)

        tf.distribute.get_replica_context().merge_call(apply, args=(gathered,))


class MoCoV2Task(ContrastiveTask):
    """Query encoder = the stage; key encoder + queue = `MomentumEncoder`; InfoNCE against the queue."""

    name = "mocov2"
    crop_area = (0.2, 1.0)  # MoCo v2's RandomResizedCrop(scale=(0.2, 1))
    OPTIONS = {
        **ContrastiveTask.OPTIONS,
        "queue_size": (0, "Negatives in the queue (0: 65536 as MoCo above 64 px, 4096 at <=64 px).",
                       non_negative_int()),
        "momentum": (0.999, "Momentum of the key encoder's update.", fraction(closed=False)),
        "shuffle_groups": (8, "Key BatchNorm groups per replica (shuffle BN; a divisor of the replica batch).",
                           positive_int()),
    }

    def __init__(self, image_size, head_hidden=256, sync_bn=False, temperature=None, projection_dim=128,
                 strength=None, blur_rate=0.5, sobel_rate=0.2, queue_size=None, momentum=0.999, shuffle_groups=8):
        super().__init__(image_size, head_hidden, sync_bn, temperature, projection_dim, strength, blur_rate,
                         sobel_rate)
        self.queue_size = int(queue_size or (4096 if self.image_size <= 64 else 65536))
        self.momentum = float(momentum)
        self.shuffle_groups = int(shuffle_groups)
        if not 0.0 <= self.momentum < 1.0 or self.queue_size < 1 or self.shuffle_groups < 1:
            raise ValueError("momentum must be in [0, 1); queue_size and shuffle_groups at least 1.")

    def default_temperature(self):
        return 0.2  # MoCo v2

    def default_strength(self):
        return 0.5  # MoCo v2's ColorJitter(0.4, 0.4, 0.4, 0.1) is SimCLR's at strength 0.5

    def build_head(self, level, feature_channels, name):
        """MoCo v2's MLP head: pool, Dense(head_hidden) + ReLU, Dense(projection_dim) (no BatchNorm)."""
        features = keras.Input((None, None, feature_channels), name=f"{name}_features")
        x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        x = layers.Dense(self.head_hidden, activation="relu", name=f"{name}_hidden")(x)
        projection = layers.Dense(self.projection_dim, dtype="float32", name=f"{name}_projection")(x)
        return keras.Model(features, projection, name=name)

    def build_stage_state(self, stage_model):
        if self.queue_size < stage_model.global_batch_size:
            raise PSLError(f"--mocov2_queue_size={self.queue_size} must hold at least one global batch "
                           f"(--batch_size={stage_model.global_batch_size}).")
        return MomentumEncoder(stage_model.trained_blocks, stage_model.head, self.queue_size, self.momentum,
                               self.shuffle_groups, seed=stage_model.stage.index, name="key_encoder")

    def stage_outputs(self, stage_model, features, training=False):
        # features: both views of each image, interleaved (view 1 at even rows, view 2 at odd rows).
        queries = stage_model.trained_forward(features[0::2], training=training)
        keys = stage_model.task_state.keys(features[1::2])
        return {"queries": queries, "keys": keys, "queue": ops.convert_to_tensor(stage_model.task_state.queue)}

    def objective(self, labels, outputs):
        return info_nce(outputs["queries"], outputs["keys"], outputs["queue"], self.temperature)

    def after_step(self, stage_model, outputs):
        stage_model.task_state.update(outputs["keys"])

    def get_config(self):
        config = super().get_config()
        config.update(queue_size=self.queue_size, momentum=self.momentum, shuffle_groups=self.shuffle_groups)
        return config
