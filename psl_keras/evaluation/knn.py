"""Weighted k-nearest-neighbour accuracy on frozen, pooled block features (cosine similarity).

A query's neighbours are its k most similar training examples; neighbour j votes for its class with
weight exp(sim_j / T); the class with the largest total wins (Wu et al. 2018; k=200, T=0.07 by default).
"""

import keras
import numpy as np
import tensorflow as tf

from psl_keras import data as data_lib
from psl_keras.evaluation.preprocessing import center_view
from psl_keras.faults import kill_point


def pooled_features(backbone, images, blocks):
    """{block: L2-normalised global-average-pooled features} of a batch of model-ready images."""
    outputs = backbone(images, training=False)
    return {b: tf.math.l2_normalize(tf.reduce_mean(outputs[b], axis=[1, 2]), axis=-1) for b in blocks}


def extract_features(backbone, source, image_size, blocks, batch_size=256, limit=None, verbose=0, on_progress=None):
    """({block: L2-normalised global-average-pooled features [N, C]}, labels [N]) of a source.

    `on_progress(done, total)` is called after every batch (e.g. a web page's progress bar)."""
    source = source.head(limit) if limit else source
    pipeline = data_lib.eval_pipeline(source, lambda image: center_view(image, image_size), batch_size)

    pooled = tf.function(lambda images: pooled_features(backbone, images, blocks))

    features = {b: [] for b in blocks}
    labels = []
    progbar = keras.utils.Progbar(source.num_examples, verbose=verbose, unit_name="image")
    for images, batch_labels in pipeline:
        for b, f in pooled(images).items():
            features[b].append(f.numpy())
        labels.append(batch_labels.numpy())
        progbar.add(len(batch_labels))
        if on_progress is not None:
            on_progress(sum(len(l) for l in labels), source.num_examples)
    return {b: np.concatenate(f) for b, f in features.items()}, np.concatenate(labels)


def knn_predict(bank, bank_labels, queries, num_classes, k=200, temperature=0.07, chunk=512):
    """Class predictions for L2-normalised `queries` [Q, C] from a normalised `bank` [N, C]."""
    k = min(k, len(bank))
    bank_t = tf.constant(bank, tf.float32)
    bank_labels_t = tf.constant(bank_labels, tf.int32)
    predictions = []
    for start in range(0, len(queries), chunk):
        similarity = tf.matmul(tf.constant(queries[start:start + chunk], tf.float32), bank_t, transpose_b=True)
        top_sim, top_index = tf.math.top_k(similarity, k=k)
        weights = tf.exp(top_sim / temperature)
        votes = tf.one_hot(tf.gather(bank_labels_t, top_index), num_classes) * weights[..., None]
        predictions.append(tf.argmax(tf.reduce_sum(votes, axis=1), axis=-1).numpy())
    return np.concatenate(predictions) if predictions else np.zeros((0,), np.int64)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=200, temperature=0.07):
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return float(np.mean(predicted == query_labels))


class KNNMonitor(keras.callbacks.Callback):
    """Reports kNN accuracy on a held-out split at the end of every epoch of every stage.

    The block is the current stage's last block (what the stage is training) unless `block` is given.
    Adds `knn_accuracy` to the epoch logs, so the CSV and TensorBoard logs carry it.
    """

    def __init__(self, backbone, bank_source, query_source, image_size, k=200, temperature=0.07,
                 block=None, bank_size=10_000, batch_size=256, verbose=1):
        super().__init__()
        self.backbone = backbone
        self.bank_source = bank_source
        self.query_source = query_source
        self.image_size = image_size
        self.k, self.temperature = k, temperature
        self.block = block
        self.bank_size = bank_size
        self.batch_size = batch_size
        self.verbose = verbose
        self.num_classes = max(bank_source.num_classes, query_source.num_classes)
        self.last_accuracy = None

    def on_epoch_end(self, epoch, logs=None):
        block = self.block or f"B{getattr(getattr(self.model, 'stage', None), 'last_block', 5)}"
        bank, bank_labels = extract_features(self.backbone, self.bank_source, self.image_size, [block],
                                             self.batch_size, limit=self.bank_size)
        queries, query_labels = extract_features(self.backbone, self.query_source, self.image_size, [block],
                                                 self.batch_size)
        kill_point("knn_monitor")
        accuracy = knn_accuracy(bank[block], bank_labels, queries[block], query_labels, self.num_classes,
                                self.k, self.temperature)
        self.last_accuracy = accuracy
        if logs is not None:
            logs["knn_accuracy"] = accuracy
        if self.verbose:
            print(f"kNN accuracy ({block}, k={self.k}, {self.query_source.split}): {accuracy:.4f}")
