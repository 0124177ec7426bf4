"""Training configuration: one dataclass, named presets, and the rule defaults < preset < explicit flags."""

import dataclasses

from psl_keras.errors import PSLError


@dataclasses.dataclass
class TrainConfig:
    task: str = "rotation"
    task_options: dict = dataclasses.field(default_factory=dict)  # the task's OPTIONS, e.g. set_sizes
    mode: str = "psl"
    backbone: str = "resnet18"
    width: float = 1.0
    stem: str = "auto"  # auto: cifar stem for inputs of 64 px or less, else imagenet
    image_size: int = 32
    sync_bn: bool = False
    head_hidden: int = 256
    stage_windows: str = "1-3,2-4,3-5"
    dataset: str = "cifar10"
    data_dir: str = ""  # "" -> TFDS default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    split: str = "train"
    epochs_per_stage: int = 10
    e2e_epochs: int = 0  # 0 -> epochs_per_stage x number of PSL stages (equal budget)
    steps_per_epoch: int = 0  # a cap for smoke runs; 0 -> one pass over the split
    batch_size: int = 512  # global, over all replicas
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    schedule_pattern: str = "20,20,10,10"
    warmup_epochs: float = 0.0
    shuffle_buffer: int = 10_000  # streaming sources only; in-memory ones are fully shuffled
    seed: int = 0
    jit_compile: bool = False
    mixed_precision: bool = False
    strategy: str = "default"
    cpu_replicas: int = 0
    output_dir: str = "runs/psl"
    checkpoint_every_steps: int = 0  # also checkpoint inside epochs (0: at epoch ends only)
    knn_monitor: bool = False  # kNN accuracy on knn_split at the end of every epoch (chief only)
    knn_split: str = "test"
    knn_k: int = 200
    knn_temperature: float = 0.07
    knn_bank_size: int = 10_000  # training examples in the kNN bank (0: all)

    def to_dict(self):
        return dataclasses.asdict(self)

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

PRESETS = {
    # Rotation used RevNet-50 in the paper (§4.1); jigsaw ResNet-50.
    "imagenet_paper": {"*": _IMAGENET_PAPER, "rotation": dict(backbone="revnet50")},
    # Nine tiles per image make a jigsaw step ~9x a rotation step: a smaller batch and lr to match.
    "cifar10_small": {"*": _CIFAR10_SMALL, "jigsaw": dict(batch_size=128, lr=0.05)},
}


def preset_values(preset, task):
    """Field values of a preset for a task ({} for preset "none")."""
    if preset in ("", "none", None):
        return {}
    if preset not in PRESETS:
        raise PSLError(f"Unknown preset {preset!r}. Choose one of: none, {', '.join(PRESETS)} (--config).")
    values = dict(PRESETS[preset]["*"])
    values.update(PRESETS[preset].get(task, {}))
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
