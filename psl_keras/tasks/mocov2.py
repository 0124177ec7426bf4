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

import keras
from keras import layers, ops

from psl_keras.errors import PSLError
from psl_keras.ranges import fraction, non_negative_int, positive_int
from psl_keras.tasks.contrastive import ContrastiveTask, MomentumEncoder


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


class MoCoV2Task(ContrastiveTask):
    """Query encoder = the stage; key encoder + queue = `MomentumEncoder`; InfoNCE against the queue."""

    name = "mocov2"
    crop_area = (0.2, 1.0)  # MoCo v2's RandomResizedCrop(scale=(0.2, 1))
    # MoCo v2 (Chen et al. 2020): SGD lr 0.03 at batch 256, weight decay 1e-4, cosine, MLP head 2048, 200 epochs
    # (split 60/70/70 as for SimCLR). CIFAR-10: lr 0.06 at batch 512, weight decay 5e-4, key momentum 0.99 and a
    # 4096-key queue, the usual small-data MoCo settings.
    PRESETS = {
        "imagenet_paper": dict(optimizer="sgd", lr=0.03, momentum=0.9, nesterov=False, weight_decay=1e-4,
                               schedule="cosine", stage_epochs="60,70,70", head_hidden=2048),
        "cifar10_small": dict(optimizer="sgd", lr=0.06, momentum=0.9, nesterov=False, weight_decay=5e-4,
                              task_options={"momentum": 0.99}),
    }
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
        return MomentumEncoder(stage_model.trained_blocks, stage_model.head, self.momentum, self.shuffle_groups,
                               seed=stage_model.stage.index, queue_size=self.queue_size, name="key_encoder")

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
