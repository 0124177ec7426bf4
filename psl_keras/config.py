"""Training configuration: one dataclass, named presets, and the rule defaults < preset < explicit flags."""

import dataclasses

from psl_keras.distribute import STRATEGIES
from psl_keras.errors import PSLError
from psl_keras.ranges import Range, fraction, non_negative, non_negative_int, positive, positive_int


def setting(default, help, choices=None, allowed=None):
    """A TrainConfig field with the help text, choices or allowed Range its train.py flag is generated from."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "allowed": allowed})


# What --deterministic needs in the environment before TensorFlow loads (train.py sets it): oneDNN off and one
# thread per pool. Measured with benchmarks/determinism.py: op determinism with oneDNN off still differs from run
# to run at batch 512; with one thread runs are bit-identical.
DETERMINISTIC_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                     "OMP_NUM_THREADS": "1"}

# Choices of the enumerated settings (tests check they equal the registries: stages.MODES, ...).
MODES = ("psl", "sl", "psl_f", "e2e")
STEMS = ("auto", "imagenet", "cifar")
SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "lars")
BACKENDS = ("tensorflow", "jax")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run; train.py makes one --flag per field (task_options aside)."""

    task: str = setting("rotation", "Pretext task (psl_keras.tasks.TASKS).")
    # The task's OPTIONS, e.g. set_sizes; train.py exposes them as --{task}_{option}.
    task_options: dict = dataclasses.field(default_factory=dict)
    mode: str = setting("psl", "Training mode.", MODES)
    backbone: str = setting("resnet18", "Backbone (psl_keras.backbones.BACKBONES).")
    width: float = setting(1.0, "Backbone width multiplier.", allowed=positive())
    stem: str = setting("auto", "Backbone stem; auto: CIFAR stem for inputs of 64 px or less, else ImageNet.", STEMS)
    revnet_recompute: bool = setting(True, "RevNets: rebuild each reversible unit's input from its output in the "
                                           "backward pass instead of storing activations (less memory, about one "
                                           "more forward pass of those units; the same gradients).")
    image_size: int = setting(32, "Side of the square training input.", allowed=Range(8, 4096, integer=True))
    sync_bn: bool = setting(False, "Synchronise BatchNorm statistics across replicas.")
    head_hidden: int = setting(256, "Hidden units of the stage heads.", allowed=positive_int())
    stage_windows: str = setting("1-3,2-4,3-5", "Stage windows over blocks B1..B5.")
    dataset: str = setting("cifar10", "TFDS dataset name, folder:PATH, or arrays:FILE (python -m psl_keras.data).")
    data_dir: str = setting("", "TFDS data directory (default: TFDS's own, $TFDS_DATA_DIR or ~/tensorflow_datasets).")
    split: str = setting("train", "Split to train on.")
    download: bool = setting(True, "Download and prepare a TFDS dataset missing from --data_dir "
                                   "(--nodownload: fail with how to prepare it offline).")
    on_bad_image: str = setting("skip", "Image folders: files that cannot be decoded are left out and named "
                                        "(skip) or stop the run before it starts (error).", ("skip", "error"))
    epochs_per_stage: int = setting(10, "Epochs of each stage.", allowed=positive_int())
    stage_epochs: str = setting("", "Epochs of each stage, e.g. 60,70,70 (empty: --epochs_per_stage each).")
    e2e_epochs: int = setting(0, "E2E epochs; 0: the stages' epochs summed (the same budget).",
                              allowed=non_negative_int())
    steps_per_epoch: int = setting(0, "Cap on steps per epoch (0: one pass over the split), for smoke runs.",
                                   allowed=non_negative_int())
    batch_size: int = setting(512, "Global batch size over all replicas.", allowed=positive_int())
    optimizer: str = setting("sgd", "Optimizer (lars: SimCLR's layer-wise adaptive SGD).", OPTIMIZERS)
    lr: float = setting(0.2, "Base learning rate of each stage.", allowed=positive())
    momentum: float = setting(0.9, "SGD momentum.", allowed=fraction(closed=False))
    nesterov: bool = setting(True, "Nesterov momentum.")
    weight_decay: float = setting(5e-4, "L2 weight decay on kernels (not biases/BN).", allowed=non_negative())
    schedule: str = setting("cosine", "LR schedule per stage.", SCHEDULES)
    schedule_pattern: str = setting("20,20,10,10", "Step schedule segments (x0.1 each).")
    warmup_epochs: float = setting(0.0, "Linear warm-up epochs (cosine schedule).", allowed=non_negative())
    shuffle_buffer: int = setting(10_000, "Shuffle buffer of streaming sources (in-memory ones are fully shuffled).",
                                  allowed=positive_int())
    seed: int = setting(0, "Seed of every random choice.", allowed=Range(0, 2**31 - 1, integer=True))
    jit_compile: bool = setting(False, "Compile the train step with XLA.")
    mixed_precision: bool = setting(False, "Mixed precision (float16 GPU, bfloat16 CPU).")
    deterministic: bool = setting(False, "Bit-reproducible runs on one machine: one CPU thread per pool, oneDNN "
                                         "off, deterministic kernels (slower; benchmarks/determinism.py).")
    strategy: str = setting("default", "tf.distribute strategy.", STRATEGIES)
    backend: str = setting("tensorflow", "Keras backend. jax: one process over its local devices (rotation), "
                                         "--dataset arrays:FILE where TensorFlow is absent.", BACKENDS)
    cpu_replicas: int = setting(0, "Split the CPU into this many logical devices (multi-replica runs without GPUs).",
                                allowed=Range(0, 256, integer=True))
    output_dir: str = setting("runs/psl", "Run directory.")
    checkpoint_every_steps: int = setting(0, "Also checkpoint every N steps inside an epoch (0: at epoch ends only).",
                                          allowed=non_negative_int())
    knn_monitor: bool = setting(False, "Report kNN accuracy of the stage's last block on --knn_split after every "
                                       "epoch (chief only).")
    knn_split: str = setting("test", "Held-out split of the kNN monitor.")
    knn_k: int = setting(200, "kNN monitor: neighbours.", allowed=positive_int())
    knn_temperature: float = setting(0.07, "kNN monitor: vote temperature.", allowed=positive())
    knn_bank_size: int = setting(10_000, "kNN monitor: training examples in the bank (0: all).",
                                 allowed=non_negative_int())

    def to_dict(self):
        return dataclasses.asdict(self)

    def check(self):
        """Raises a PSLError naming the first setting outside its allowed range or choices."""
        for field in dataclasses.fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise PSLError(f"--{field.name}={value!r}: must be one of {', '.join(meta['choices'])}.")
            if meta.get("allowed") is not None:
                message = meta["allowed"].error(field.name, value)
                if message:
                    raise PSLError(message)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# The paper's ImageNet settings (§4.1): SGD momentum 0.9, lr 0.01 dropped x0.1 on 20/20/10/10 per stage,
# weight decay 1e-4 without decay on biases, batch 256, 60 epochs per stage.
_IMAGENET_PAPER = dict(
    dataset="imagenet2012",
    image_size=224,
    backbone="resnet50",
    width=1.0,
    batch_size=256,
    epochs_per_stage=60,
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    nesterov=False,
    weight_decay=1e-4,
    schedule="step",
    schedule_pattern="20,20,10,10",
)

# CIFAR-10 on a CPU: a CIFAR-stem ResNet-18 at half width; SGD nesterov lr 0.2, cosine, weight decay 5e-4,
# batch 512 trained rotation well in the independent calibration run (shared/docs/calibration.md).
_CIFAR10_SMALL = dict(
    dataset="cifar10",
    image_size=32,
    backbone="resnet18",
    width=0.5,
    batch_size=512,
    epochs_per_stage=15,
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    schedule="cosine",
)

# A first look in minutes on a laptop CPU (the demo's runs): a quarter-width CIFAR-stem ResNet-18, 20,000 CIFAR-10
# training images, 3 epochs a stage, and the kNN monitor on 1,000 test images so the demo's run table shows it.
_CIFAR10_QUICK = dict(
    _CIFAR10_SMALL,
    width=0.25,
    split="train[:20000]",
    batch_size=256,
    epochs_per_stage=3,
    knn_monitor=True,
    knn_split="test[:1000]",
    knn_k=20,
    knn_bank_size=5000,
)

# Each task adds its own settings to a preset (its class's PRESETS): rotation trains RevNet-50 in the paper,
# jigsaw a smaller batch, the contrastive tasks their own optimizers.
PRESETS = {"imagenet_paper": _IMAGENET_PAPER, "cifar10_small": _CIFAR10_SMALL, "cifar10_quick": _CIFAR10_QUICK}
# A task's settings for the preset on the right serve the one on the left where the task names none of its own.
PRESET_BASES = {"cifar10_quick": "cifar10_small"}


def preset_values(preset, task):
    """Field values of a preset for a task ({} for preset "none")."""
    if preset in ("", "none", None):
        return {}
    if preset not in PRESETS:
        raise PSLError(f"Unknown preset {preset!r}. Choose one of: none, {', '.join(PRESETS)} (--config).")
    from psl_keras.tasks import TASKS

    values = dict(PRESETS[preset])
    if task in TASKS:
        own = TASKS[task].PRESETS
        values.update(own.get(preset, own.get(PRESET_BASES.get(preset), {})))
    return values


def resolve_config(preset, explicit):
    """Defaults, then the preset for the task, then the explicitly given values (which always win)."""
    task = explicit.get("task", TrainConfig.task)
    values = TrainConfig().to_dict()
    preset = preset_values(preset, task)
    options = {**preset.pop("task_options", {}), **explicit.get("task_options", {})}
    values.update(preset)
    values.update({k: v for k, v in explicit.items() if k != "task_options"})
    values["task_options"] = options
    return TrainConfig.from_dict(values)
