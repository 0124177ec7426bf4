"""A run directory: the files train.py writes, its progress state, and writes that never leave half a file.

  checkpoints/     tf.train checkpoints (backbone, current head, current optimizer); .workers/ in multi-worker runs
  state.json       RunState: progress, replaced atomically after each checkpoint; what --resume reads
  stage{i}_backbone.keras, stage{i}_head.keras, backbone.keras, summary.json, log.csv, tensorboard/

The trainer, the evaluation code and the demo name these files through this module only.
"""

import dataclasses
import json
import os
import shutil
import tempfile

from psl_keras.errors import PSLError
from psl_keras.faults import kill_point

BACKBONE_FILE = "backbone.keras"  # the trained backbone alone: images in [0, 1] -> {"B1": ..., "B5": ...}
SUMMARY_FILE = "summary.json"  # config, task, per-stage results
STATE_FILE = "state.json"  # progress; what --resume reads
LOG_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"


def stage_backbone_file(stage_index):
    """The backbone as stage `stage_index` (1-based) left it."""
    return f"stage{stage_index}_backbone.keras"


def stage_head_file(stage_index):
    """Head g_i of stage `stage_index`: features of the stage's last block -> logits of its level."""
    return f"stage{stage_index}_head.keras"


def write_json_atomic(path, payload):
    """Writes JSON so that a crash leaves either the old file or the new one, never half of one."""
    _replace_atomically(path, json.dumps(payload, indent=2, sort_keys=True), ".json", kill_at="json_write")


def write_text_atomic(path, text):
    """Writes a text file so that a crash leaves either the old file or the new one."""
    _replace_atomically(path, text, ".txt")


def _replace_atomically(path, text, suffix, kill_at=None):
    """Writes `text` to a temporary file beside `path`, puts it on disk, then renames it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=suffix)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
        fsync_file(f)
    if kill_at:
        kill_point(kill_at)
    os.replace(tmp, path)
    _fsync_directory(directory)


def fsync_file(f):
    """Puts an open file's written bytes on disk (before it is renamed into place)."""
    f.flush()
    os.fsync(f.fileno())


def _fsync_directory(directory):
    """Makes a rename durable: after a power cut the directory holds the new name, not the old one."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories
    finally:
        os.close(fd)


def save_keras_atomic(model, path):
    """Saves a `.keras` file through a temporary name, so an interrupted save never replaces a good file."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp_{os.path.basename(path)}")
    model.save(tmp)
    with open(tmp, "rb") as f:  # on disk before the rename, so a power cut cannot leave an empty file
        os.fsync(f.fileno())
    kill_point("keras_write")
    os.replace(tmp, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


@dataclasses.dataclass
class RunState:
    """Where a run stands; state.json holds it after every checkpoint."""

    config: dict
    stage: int = 1  # the stage in progress, or the last one finished
    epoch: int = 0  # epochs of `stage` done
    step: int = 0  # steps done inside the next epoch (a mid-epoch checkpoint)
    totals: dict = None  # the running loss/accuracy sums of that partial epoch
    checkpoint: str = None  # the checkpoint holding the weights and optimizer state of this point
    stages: list = dataclasses.field(default_factory=list)  # the result of every finished stage
    previous: dict = None  # the point recorded before this one (its checkpoint is kept too), for rollback
    epoch_logs: dict = None  # the logs (loss, accuracy, lr, ...) of the last finished epoch of `stage`
    # The last point is an epoch's end whose callbacks (kNN monitor, log.csv, TensorBoard) have not all run:
    # a kill among them is repaired on --resume by running them again from that point's checkpoint.
    epoch_end_pending: bool = False

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def start_stage(self, index):
        self.stage, self.epoch, self.step, self.totals = index, 0, 0, None

    def record(self, stage, epoch, step, totals, checkpoint, epoch_logs=None):
        """`epoch` epochs and `step` more steps of `stage` are done and saved in `checkpoint`."""
        if self.checkpoint:
            self.previous = {"stage": self.stage, "epoch": self.epoch, "step": self.step, "totals": self.totals,
                             "checkpoint": self.checkpoint}
        if epoch_logs is not None:
            self.epoch_logs = dict(epoch_logs)
        self.epoch_end_pending = epoch_logs is not None
        self.stage, self.epoch, self.step = stage, epoch, step
        self.totals = dict(totals) if totals else None
        self.checkpoint = checkpoint

    def roll_back(self):
        """Go back to the previous point of the same stage (the last one is bad); False when there is none."""
        if not self.previous or self.previous["stage"] != self.stage:
            return False
        point, self.previous = self.previous, None
        self.stage, self.epoch, self.step = point["stage"], point["epoch"], point["step"]
        self.totals, self.checkpoint = point["totals"], point["checkpoint"]
        self.epoch_end_pending = False  # the run went on past that point, so its epoch-end callbacks ran
        return True

    def epoch_ended(self):
        """The last epoch's end callbacks have all run."""
        self.epoch_end_pending = False

    def finish_stage(self, result):
        self.stages = [s for s in self.stages if s["stage"] != result["stage"]] + [result]


class RunDirectory:
    """The run directory of one training process. Only the chief writes files; other workers keep their
    share of each checkpoint under .workers/ and remove it at the end."""

    def __init__(self, path, chief=True, worker=0):
        self.path = path
        self.chief = chief
        self.worker = worker

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def checkpoint_dir(self):
        if self.chief:
            return self.file("checkpoints")
        return self.file(os.path.join(".workers", f"worker_{self.worker}"))

    def open(self, config, resume, resumable_fields, upgrade=None):
        """The saved RunState to continue (None: start fresh), after the checks that protect a run.

        Without `resume` an existing run is never overwritten; with it, every setting outside
        `resumable_fields` must equal the saved run's (`config` is the new run's TrainConfig as a dict).
        `upgrade` maps a saved config to today's form first (e.g. filling in settings added since).
        """
        state_path = self.file(STATE_FILE)
        exists = os.path.exists(state_path)
        if not resume:
            if exists:
                raise PSLError(f"{self.path} already holds a run. Pass --resume to continue it, or choose a new "
                               f"--output_dir (nothing was overwritten).")
            return None
        if not exists:
            if os.path.isdir(self.path) and os.listdir(self.path):
                raise PSLError(f"--resume: {self.path} has no {STATE_FILE}, so it is not a psl-keras run that "
                               f"can be resumed. Check --output_dir.")
            return None  # nothing to resume: start fresh
        try:
            with open(state_path) as f:
                state = RunState.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as err:
            raise PSLError(f"--resume: cannot read {state_path} ({err}).") from None
        saved = state.config or {}
        if upgrade and saved:
            saved = upgrade(saved)
        mismatched = {k: (saved.get(k), v) for k, v in config.items()
                      if k not in resumable_fields and k in saved and saved[k] != v}
        if mismatched:
            details = ", ".join(f"--{k}: run has {a!r}, now {b!r}" for k, (a, b) in mismatched.items())
            raise PSLError(f"--resume: the run in {self.path} was started with other settings ({details}). Resume "
                           f"with the same flags (the run's config is in {state_path}) or use a new --output_dir.")
        return state

    def saved_config(self):
        """The config of the run saved here (a dict), or None when there is none or it cannot be read
        (`open` reports that)."""
        try:
            with open(self.file(STATE_FILE)) as f:
                return RunState.from_dict(json.load(f)).config or None
        except (OSError, ValueError, TypeError):
            return None

    def prepare(self):
        if self.chief:
            os.makedirs(self.path, exist_ok=True)
            for name in os.listdir(self.path):  # left by a process killed while writing (write_json_atomic, ...)
                if name.startswith(".tmp_"):
                    try:
                        os.remove(self.file(name))
                    except OSError:
                        pass

    def write_state(self, state):
        if self.chief:
            write_json_atomic(self.file(STATE_FILE), state.to_dict())

    def write_summary(self, summary):
        if self.chief:
            write_json_atomic(self.file(SUMMARY_FILE), summary)

    def save_model(self, model, name):
        if self.chief:
            save_keras_atomic(model, self.file(name))

    def finish(self):
        """Non-chief workers remove their checkpoint copies (the chief's are the run's)."""
        if not self.chief:
            shutil.rmtree(self.file(".workers"), ignore_errors=True)
