"""Linear probes on every block of a frozen backbone (Goyal et al. 2019 protocol; PSL Tables 5/6, 9).

Each block's output is average-pooled to about 9,000 values (ResNet-50 at 224: 12x12x64, 6x6x256,
4x4x512, 3x3x1024, 2x2x2048, the reference protocol's sizes, derived here from each block's channels and
spatial size), normalised by a BatchNorm without learned scale or offset, and classified by a linear
layer. All five classifiers train in the same pass: one frozen forward per batch feeds five heads.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from psl_keras import optim
from psl_keras.backbones import BLOCK_NAMES
from psl_keras.seeds import PROBE_HEAD_SEED, derived_seed

TARGET_DIMS = 9216


def pool_geometry(spatial, channels, target=TARGET_DIMS):
    """(output side, kernel, stride) of the average pooling that leaves about `target` features."""
    side = int(max(1, min(spatial, round(math.sqrt(target / channels)))))
    stride = spatial // side
    kernel = spatial - (side - 1) * stride
    return side, kernel, stride


def block_shapes(backbone, image_size):
    """{block: (spatial side, channels)} of a backbone at its input size."""
    outputs = backbone(np.zeros((1, image_size, image_size, 3), "float32"), training=False)
    return {name: (int(outputs[name].shape[1]), int(outputs[name].shape[-1])) for name in BLOCK_NAMES}


class AllBlocksProbe(keras.Model):
    """A frozen backbone and one linear classifier per block, trained together with a custom train_step.

    `multi_label` switches to sigmoid cross-entropy over a multi-hot target (VOC-style transfer).
    """

    def __init__(self, backbone, image_size, num_classes, global_batch_size, weight_decay=5e-4,
                 blocks=BLOCK_NAMES, multi_label=False, seed=0, **kwargs):
        super().__init__(name=kwargs.pop("name", "all_blocks_probe"), **kwargs)
        self.backbone = backbone
        self.block_names = list(blocks)
        self.num_classes = int(num_classes)
        self.global_batch_size = int(global_batch_size)
        self.weight_decay = float(weight_decay)
        self.multi_label = bool(multi_label)
        shapes = block_shapes(backbone, image_size)
        self.geometry = {}
        self.heads = []
        for name in self.block_names:
            spatial, channels = shapes[name]
            side, kernel, stride = pool_geometry(spatial, channels)
            self.geometry[name] = {"pooled": [side, side, channels], "dims": side * side * channels,
                                   "kernel": kernel, "stride": stride}
            self.heads.append(keras.Sequential([
                keras.Input((spatial, spatial, channels)),
                layers.AveragePooling2D(kernel, strides=stride),
                layers.Flatten(),
                # No learned scale or offset; momentum 0.9 so the statistics used at test time have
                # caught up with the features even in short probe runs.
                layers.BatchNormalization(center=False, scale=False, momentum=0.9),
                # Seeded: a probe's result must not depend on what else the process evaluated before it.
                layers.Dense(self.num_classes, dtype="float32", kernel_initializer=keras.initializers.GlorotUniform(
                    derived_seed(seed, PROBE_HEAD_SEED, BLOCK_NAMES.index(name)))),
            ], name=f"probe_{name}"))

    def block_features(self, images):
        outputs = self.backbone(images, training=False)
        return [ops.stop_gradient(outputs[name]) for name in self.block_names]

    def call(self, images, training=False):
        return [head(f, training=training) for head, f in zip(self.heads, self.block_features(images))]

    def _per_example_loss(self, labels, logits):
        if self.multi_label:
            return keras.losses.binary_crossentropy(ops.cast(labels, "float32"), logits, from_logits=True)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def train_step(self, data):
        images, labels = data
        features = self.block_features(images)  # frozen: outside the tape
        variables = [v for head in self.heads for v in head.trainable_variables]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = [head(f, training=True) for head, f in zip(self.heads, features)]
            losses = [self._per_example_loss(labels, l) for l in logits]
            total = ops.sum([ops.sum(l) for l in losses]) / self.global_batch_size
            total += optim.l2_penalty(variables, self.weight_decay, replicas)
        gradients = tape.gradient(total, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        result = {"count": ops.cast(ops.shape(images)[0], "float32")}
        for name, loss, logit in zip(self.block_names, losses, logits):
            result[f"loss_{name}"] = ops.sum(loss)
            if not self.multi_label:
                result[f"correct_{name}"] = ops.sum(top_k_correct(labels, logit, 1))
        return result

    def eval_step(self, data):
        """Sums of top-1 / top-5 hits per block (single-label), or the scores themselves (multi-label)."""
        images, labels = data
        logits = self(images, training=False)
        if self.multi_label:
            return {"labels": ops.cast(labels, "float32"),
                    **{f"scores_{n}": ops.sigmoid(l) for n, l in zip(self.block_names, logits)}}
        result = {"count": ops.cast(ops.shape(images)[0], "float32")}
        for name, logit in zip(self.block_names, logits):
            result[f"top1_{name}"] = ops.sum(top_k_correct(labels, logit, 1))
            result[f"top5_{name}"] = ops.sum(top_k_correct(labels, logit, min(5, self.num_classes)))
        return result


def top_k_correct(labels, logits, k):
    """1.0 where the label is among the k highest logits."""
    return ops.cast(tf.math.in_top_k(ops.cast(ops.reshape(labels, (-1,)), "int32"), logits, k), "float32")


def mean_average_precision(labels, scores):
    """VOC-style mAP: the mean over classes (with at least one positive) of average precision."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores)
    aps = []
    for c in range(labels.shape[1]):
        positives = labels[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = labels[order, c]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / positives))
    return float(np.mean(aps)) if aps else float("nan")
