"""A run directory: the files train.py writes, its progress state, and writes that never leave half a file.

  checkpoints/     tf.train checkpoints (backbone, current head, current optimizer); .workers/ in multi-worker runs
  state.json       RunState: progress, replaced atomically after each checkpoint; what --resume reads
  stage{i}_backbone.keras, stage{i}_head.keras, backbone.keras, summary.json, log.csv, tensorboard/

This module is the one owner of that format: the trainers write it through `RunDirectory`, and evaluate.py
and the demo read it through `find_run`, `load_backbone`, `load_stages`, `run_task` and `scan_runs`.
"""

import dataclasses
import json
import os
import shutil

from psl_keras.atomic import TEMP_PREFIX, atomic_path, write_json_atomic
from psl_keras.errors import PSLError

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


def save_keras_atomic(model, path):
    """Saves a `.keras` file so that an interrupted save never replaces a good file."""
    with atomic_path(path, kill_at="keras_write") as tmp:
        model.save(tmp)


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

    def __init__(self, path, chief=True, worker=0, flag="--output_dir"):
        self.path = path
        self.flag = flag  # the command-line flag that names this folder, for messages
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
                               f"can be resumed. Check {self.flag}.")
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
            raise PSLError(f"The run in {self.path} was started with other settings ({details}). Resume "
                           f"with the same flags (the run's config is in {state_path}) or use a new {self.flag}.")
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
            for name in os.listdir(self.path):  # left by a process killed while writing (atomic_path)
                if name.startswith(TEMP_PREFIX):
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


# --- reading a run (evaluate.py, the demo) ------------------------------------------------------------


@dataclasses.dataclass
class Run:
    name: str
    path: str
    backbone_path: str
    summary: dict  # summary.json of the run ({} for a bare .keras file)


def find_run(path, name=None):
    """A Run for a run directory written by train.py, or for a `.keras` backbone file."""
    path = os.path.normpath(path)
    if os.path.isfile(path) and path.endswith(".keras"):
        return Run(name or os.path.splitext(os.path.basename(path))[0], path, path, {})
    backbone_path = os.path.join(path, BACKBONE_FILE)
    if not os.path.isdir(path) or not os.path.isfile(backbone_path):
        raise PSLError(
            f"--runs: {path} is not a finished psl-keras run (no {BACKBONE_FILE} in it). Pass run directories "
            f"written by train.py (or .keras backbone files); an interrupted run finishes with train.py --resume."
        )
    summary = _read_json(os.path.join(path, SUMMARY_FILE)) if os.path.isfile(os.path.join(path, SUMMARY_FILE)) else {}
    return Run(name or os.path.basename(os.path.abspath(path)), path, backbone_path, summary)


def parse_runs(text):
    """'runs/e2e,psl=runs/psl' -> [Run('e2e', ...), Run('psl', ...)] (NAME=PATH renames a column)."""
    runs = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, path = item.rpartition("=")
        runs.append(find_run(path, name or None))
    if not runs:
        raise PSLError("--runs is empty: give one or more run directories, comma-separated.")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise PSLError(f"--runs: two runs are both called {names}; name them with NAME=PATH.")
    return runs


def _load_model(path, what):
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a damaged or foreign file
        raise PSLError(f"Cannot load {path} as a Keras model ({type(err).__name__}: "
                       f"{str(err).splitlines()[0][:200] if str(err) else ''}). {what}") from None


def load_backbone(run, path=None):
    """Loads a run's backbone (safe mode; `path`: another backbone file of the run) and checks it exposes
    blocks B1..B5."""
    from psl_keras.backbones import backbone_blocks

    backbone = _load_model(path or run.backbone_path, "Is it a backbone.keras written by train.py, complete and "
                                                      "not truncated?")
    backbone_blocks(backbone)  # raises a PSLError for a model without B1..B5
    backbone.trainable = False
    return backbone


@dataclasses.dataclass
class StageHead:
    """A trained stage head and what it belongs to (from summary.json)."""

    stage: int
    level: int
    last_block: str  # "B3": the block whose features the head reads
    description: str  # e.g. "rotation R2 = {0, 90, 180, 270} degrees"
    head: object  # the keras.Model


def load_stage_heads(run):
    """The stage heads a run kept (`stage{i}_head.keras`, loaded in safe mode), in stage order.

    [] for a run trained before heads were kept; a PSLError names a head that is listed but missing or damaged.
    """
    heads = []
    for entry in sorted(run.summary.get("stages", []), key=lambda s: s["stage"]):
        if "head_file" not in entry:
            return []
        path = os.path.join(run.path, entry["head_file"])
        if not os.path.isfile(path) or not os.path.getsize(path):
            raise PSLError(f"Run {run.name}: {path} is missing or empty, although summary.json lists it. The run's "
                           f"backbone still serves retrieval; retrain the run to get its heads back.")
        head = _load_model(path, f"Run {run.name}: the head file is damaged or not a Keras model.")
        heads.append(StageHead(entry["stage"], entry["level"], entry["last_block"], entry.get("task_level", ""),
                               head))
    return heads


def load_stages(run):
    """[(StageHead, the backbone as that stage left it)] of a run; [] for a run that kept no heads."""
    return [(head, load_backbone(run, os.path.join(run.path, stage_backbone_file(head.stage))))
            for head in load_stage_heads(run)]


def run_task(run):
    """The run's pretext task, rebuilt from its summary (the same levels, pipeline and head layout)."""
    from psl_keras.tasks import build_task, complete_options

    config = run.summary.get("config")
    if not config:
        raise PSLError(f"Run {run.name} has no summary.json with its configuration.")
    # A run saved before an option existed trained with that option's legacy value.
    options = complete_options(config["task"], config.get("task_options", {}), saved=True)
    return build_task(config["task"], config["image_size"], config.get("head_hidden", 256), options=options)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def read_summary(path):
    """summary.json of the run directory `path` (a finished run), or None while it has none."""
    summary_path = os.path.join(path, SUMMARY_FILE)
    return _read_json(summary_path) if os.path.isfile(summary_path) else None


def has_started(path):
    """Whether the run directory `path` holds a run that --resume continues."""
    return os.path.isfile(os.path.join(path, STATE_FILE))


def scan_runs(root):
    """Every run directory under `root` (recursively), as (path, summary, problem) sorted by path: `summary` is
    summary.json, or for a run still training (or stopped) its settings and finished stages from state.json;
    `problem` says why the run cannot be used yet ("" when it can)."""
    import zipfile

    found = []
    if not root or not os.path.isdir(root):
        return found
    for directory, subdirs, files in os.walk(root):
        if not ({SUMMARY_FILE, BACKBONE_FILE, STATE_FILE} & set(files)):
            continue
        subdirs[:] = []  # a run's checkpoints/ and tensorboard/ are not runs
        summary, problem, progress = {}, "", ""
        if SUMMARY_FILE in files:
            try:
                summary = _read_json(os.path.join(directory, SUMMARY_FILE))
            except (OSError, ValueError) as err:
                problem = f"{SUMMARY_FILE} is unreadable ({err})"
        if not summary and STATE_FILE in files:
            try:
                state = _read_json(os.path.join(directory, STATE_FILE))
                summary = {"config": state.get("config") or {}, "stages": state.get("stages") or []}
                progress = f"stage {state.get('stage')}, {state.get('epoch')} epoch(s) done"
            except (OSError, ValueError, AttributeError):
                progress = f"{STATE_FILE} unreadable"
        if BACKBONE_FILE not in files:
            problem = problem or (f"unfinished ({progress + '; ' if progress else ''}no {BACKBONE_FILE}): "
                                  f"continue it with train.py --resume")
        elif not zipfile.is_zipfile(os.path.join(directory, BACKBONE_FILE)):  # cheap; loading comes later
            problem = problem or f"{BACKBONE_FILE} is damaged (not a .keras archive)"
        elif not summary and not problem:
            problem = f"no {SUMMARY_FILE}"
        found.append((directory, summary, problem))
    return sorted(found)
