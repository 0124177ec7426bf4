"""Finding and loading what train.py wrote: a run directory (or a bare .keras backbone)."""

import dataclasses
import json
import os

import keras

from psl_keras.backbones import backbone_blocks, backbone_image_size
from psl_keras.errors import PSLError
from psl_keras.rundir import BACKBONE_FILE, SUMMARY_FILE


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
    summary = {}
    summary_path = os.path.join(path, SUMMARY_FILE)
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    return Run(name or os.path.basename(path), path, backbone_path, summary)


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


def load_backbone(run):
    """Loads a run's backbone (safe mode) and checks it exposes blocks B1..B5."""
    try:
        backbone = keras.saving.load_model(run.backbone_path, safe_mode=True, compile=False)
    except Exception as err:  # keras raises many types for a damaged or foreign file
        raise PSLError(
            f"Cannot load {run.backbone_path} as a Keras model ({type(err).__name__}: {err}). Is it a "
            f"backbone.keras written by train.py, complete and not truncated?"
        ) from None
    backbone_blocks(backbone)  # raises a PSLError for a model without B1..B5
    backbone.trainable = False
    return backbone


def check_resolution(backbone, source, run_name):
    """Refuses a backbone evaluated on images of a very different size from the ones it was built for."""
    size = backbone_image_size(backbone)
    shape = source.image_shape
    small_backbone = size <= 64
    if shape is not None:
        side = min(shape[:2])
        mismatch = side > 2 * size or side < size / 2
    else:
        mismatch = small_backbone  # variable-size (ImageNet-like) photos on a 32-px network
    if mismatch:
        data_desc = f"{shape[0]}x{shape[1]}" if shape else "variable-size (large)"
        raise PSLError(
            f"Run {run_name}: its backbone takes {size}x{size} images but {source.name} has {data_desc} "
            f"images. Evaluate it on data of its own resolution (e.g. cifar10 for a 32-px backbone), or "
            f"train a backbone for this data."
        )
    return size


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
        try:
            head = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as err:  # a truncated or foreign file
            raise PSLError(f"Run {run.name}: cannot load {path}, it is damaged or not a Keras model "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from None
        heads.append(StageHead(entry["stage"], entry["level"], entry["last_block"], entry.get("task_level", ""),
                               head))
    return heads


def run_task(run):
    """The run's pretext task, rebuilt from its summary (the same levels, pipeline and head layout)."""
    from psl_keras.tasks import build_task, complete_options

    config = run.summary.get("config")
    if not config:
        raise PSLError(f"Run {run.name} has no summary.json with its configuration.")
    # A run saved before an option existed trained with that option's legacy value.
    options = complete_options(config["task"], config.get("task_options", {}), saved=True)
    return build_task(config["task"], config["image_size"], config.get("head_hidden", 256), options=options)


def stage_logits(backbone, stage_head, task, inputs):
    """Logits of a stage head on a batch of task inputs: the backbone up to the head's block, then the head.

    The same computation as the stage model in inference mode: the blocks run one after another (they take
    any spatial size, jigsaw tiles included), the head reads the last one.
    """
    x = task.backbone_images(inputs)
    for block in backbone_blocks(backbone)[: int(stage_head.last_block[1:])]:
        x = block(x, training=False)
    return stage_head.head(x, training=False)
