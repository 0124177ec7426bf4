"""The distributed step shared by the trainer and the probes.

`fit()` fails under MultiWorkerMirroredStrategy with Keras 3, so every training loop here calls a model's
`train_step` through `strategy.run` and all-reduces the sums it returns; this module holds that pattern.
"""

import tensorflow as tf


def distributed_step(strategy, replica_fn, jit_compile=False):
    """A tf.function running `replica_fn(batch)` on every replica and summing its outputs over replicas.

    `replica_fn` returns a dict of per-replica sums (loss, correct, count, ...); the result holds global sums.
    """
    if jit_compile:
        replica_fn = tf.function(replica_fn, jit_compile=True)

    @tf.function
    def step(batch):
        outputs = strategy.run(replica_fn, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in outputs.items()}

    return step


def distributed_dataset(strategy, make_dataset):
    """Per-replica batches: `make_dataset(input_context)` builds each input pipeline's dataset."""
    return strategy.distribute_datasets_from_function(make_dataset)
