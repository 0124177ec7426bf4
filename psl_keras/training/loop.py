"""The distributed step, the epoch loop and the checkpointer shared by the trainer and the probes.

`fit()` fails under MultiWorkerMirroredStrategy with Keras 3, so every training loop here calls a model's
`train_step` through `strategy.run` and all-reduces the sums it returns; this module holds that pattern.
"""

import math
import time

import keras

from psl_keras.errors import PSLError
from psl_keras.lazy import tf


class Interrupted(KeyboardInterrupt):
    """Ctrl-C inside an epoch; the first `steps_done` steps of the epoch are complete (and in the totals)."""

    def __init__(self, steps_done):
        super().__init__(steps_done)
        self.steps_done = steps_done


_stop_requested = []  # the signals received by `request_stop` and not yet honoured


def request_stop(signum, frame=None):
    """Signal handler (SIGTERM: kill, timeout, a scheduler's preemption): the epoch loop stops before its next
    step, as after a Ctrl-C there, so the steps done are saved. Deferred rather than raised where the signal
    lands: a KeyboardInterrupt raised inside TensorFlow's input pipeline or a checkpoint write would surface as
    some other error with nothing saved. A second signal stops at once."""
    if _stop_requested:
        raise KeyboardInterrupt(f"signal {signum}")
    _stop_requested.append(signum)


def run_epoch(step, iterator, steps, totals, first_step=0, after_step=None, verbose=0, metrics=None,
              non_finite=None):
    """Steps `first_step` .. `steps - 1` of one epoch: each batch through `step` (a dict of all-reduced sums),
    the sums added into `totals`, a progress bar of `metrics(totals)` (a list of (name, value)), then
    `after_step(i, sums, seconds)` (checks, checkpoints, callbacks; `seconds` counts the wait for data too).

    A non-finite loss (any `loss*` sum) stops before `after_step` with a PSLError of `non_finite(i, loss)`:
    nothing after the bad step is saved. Ends early when the data does; stops with `Interrupted` before step
    i once `request_stop` was called.
    """
    progbar = None
    for i in range(first_step, steps):
        if _stop_requested:
            raise Interrupted(i)
        started = time.time()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        try:
            sums = {k: float(v) for k, v in step(batch).items()}
        except KeyboardInterrupt:
            raise Interrupted(i) from None
        loss = sum(v for k, v in sums.items() if k.startswith("loss"))
        if not math.isfinite(loss):
            raise PSLError(non_finite(i, loss) if non_finite else f"step {i + 1}: the loss is {loss}; lower --lr.")
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
        if metrics:  # running means, shown as they are (stateful), not averaged again by the bar
            values = metrics(totals)
            progbar = progbar or keras.utils.Progbar(steps, verbose=verbose, stateful_metrics=[n for n, _ in values])
            progbar.update(i + 1, values)
        if after_step is not None:
            try:
                after_step(i, sums, time.time() - started)
            except KeyboardInterrupt:
                raise Interrupted(i + 1) from None


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


class TFCheckpointer:
    """A stage's `tf.train.Checkpoint` and its manager (the two newest checkpoints are kept)."""

    def __init__(self, directory, **objects):
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def restore(self, path):
        self.checkpoint.restore(path).expect_partial()

    def save(self):
        """Writes a checkpoint; returns its path."""
        return self.manager.save()
