"""Fault injection for the reliability tests: kill this process, for real, at a named point.

  PSL_KERAS_KILL_AT=after_checkpoint:3 python train.py ...

sends SIGKILL to the process the 3rd time it reaches `kill_point("after_checkpoint")` (1st when `:n` is left
out). SIGKILL cannot be caught, so what the run directory holds afterwards is exactly what a power cut or the
OOM killer would leave at that point. Unset (always, outside tests), `kill_point` only counts.
"""

import collections
import os
import signal

ENV = "PSL_KERAS_KILL_AT"
POINTS = (
    "mid_epoch",  # after a training step, before the next checkpoint
    "after_checkpoint",  # a checkpoint and state.json were written
    "checkpoint_written",  # the checkpoint files were written, state.json not yet
    "json_write",  # a JSON file (state.json, summary.json) is half-written under its temporary name
    "keras_write",  # a .keras export is written under its temporary name, not yet renamed
    "between_stages",  # a stage is finished and exported, the next not started
    "knn_monitor",  # inside the kNN monitor, after the features are computed
)
_reached = collections.Counter()


def kill_point(point):
    """Marks `point` as reached; SIGKILLs this process if PSL_KERAS_KILL_AT asks for it."""
    _reached[point] += 1
    target = os.environ.get(ENV)
    if not target:
        return
    name, _, count = target.partition(":")
    if name == point and _reached[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
