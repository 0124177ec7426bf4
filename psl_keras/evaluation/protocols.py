"""The evaluation protocols as functions: each takes a Run and an EvalConfig and returns a result dict.

  all_blocks  linear probes on B1..B5 of the frozen backbone (Tables 5/6)
  knn         weighted kNN on pooled block features
  semi        fine-tune the whole network on a class-balanced labelled subset (Table 7), top-1 and top-5
  transfer    all-blocks linear probes on another dataset; mAP for multi-label data (Table 9)

Training runs the same loop as train.py (strategy.run on a custom train_step), so it works under every
strategy; the frozen forward happens once per batch for all five heads.
"""

import dataclasses
import json
import os
import re

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from psl_keras import data as data_lib
from psl_keras import optim
from psl_keras.training import loop
from psl_keras.training.loop import TFCheckpointer
from psl_keras.backbones import BLOCK_NAMES, backbone_image_size
from psl_keras.errors import PSLError
from psl_keras.evaluation import knn as knn_lib
from psl_keras.evaluation.linear import AllBlocksProbe, mean_average_precision, top_k_correct
from psl_keras.evaluation.preprocessing import center_view, train_view
from psl_keras.rundir import RunDirectory, RunState, load_backbone
from psl_keras.seeds import PROBE_DATA_SEED, PROBE_HEAD_SEED, derived_seed


@dataclasses.dataclass
class EvalConfig:
    dataset: str = "cifar10"
    data_dir: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    on_bad_image: str = "skip"  # image folders: leave out (and name) files that cannot be decoded, or stop
    download: bool = False  # download and prepare a TFDS dataset missing from data_dir (evaluate.py: --download)
    epochs: int = 10
    steps_per_epoch: int = 0  # cap; 0 = full passes
    batch_size: int = 256
    seed: int = 0
    lr: float = None  # None: the protocol's own default (LINEAR_LR for probes, SEMI_LR for fine-tuning)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    schedule_pattern: str = "2,1,1"
    blocks: tuple = BLOCK_NAMES
    k: int = 200
    temperature: float = 0.07
    knn_train_examples: int = 0  # 0 = the whole training split as the kNN bank
    label_fraction: float = 0.01
    label_ids_file: str = ""
    # Where probe and fine-tuning training save their state after every epoch; an interrupted evaluation given
    # the same folder continues from its last finished epoch ("" = no state kept).
    resume_dir: str = ""


# Linear heads on ~9k-dim pooled features: Goyal et al.'s 0.01 (0.1 overshoots, measured on CIFAR-10 runs);
# fine-tuning the whole network on few labels: 0.1.
LINEAR_LR, SEMI_LR = 0.01, 0.1



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

def load_sources(config, dataset=None):
    name = dataset or config.dataset
    train = data_lib.load_images(name, config.data_dir or None, config.train_split, config.on_bad_image,
                                 download=config.download)
    held_out = data_lib.load_images(name, config.data_dir or None, config.eval_split, config.on_bad_image,
                                    download=config.download)
    if not train.num_classes:
        raise PSLError(f"{name} has no class labels; probes need a labelled dataset (--dataset).")
    return train, held_out


def _steps(config, source):
    return data_lib.steps_per_epoch(source, config.batch_size, config.steps_per_epoch)


def _compile(model, config, steps_per_epoch, variables, default_lr):
    """SGD with the configured schedule; its slots are built now, inside the strategy scope, because
    optimizer variables created lazily in a replica context fail under MirroredStrategy."""
    lr = default_lr if config.lr is None else config.lr
    schedule = optim.learning_rate_schedule(config.schedule, lr, steps_per_epoch * config.epochs,
                                            pattern=optim.parse_pattern(config.schedule_pattern))
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=config.momentum))
    model.optimizer.build(variables)


def evaluate(model, source, image_size, config):
    """Runs `model.eval_step` over every example of `source` (center view); returns sums or arrays.

    Scoring is forward-only and runs on one device, outside the strategy: no partial last batch is
    split across replicas (an empty replica batch breaks TF's convolutions here), and on several workers
    each scores the whole split itself, so every worker ends with the same, complete result.
    """
    dataset = data_lib.eval_pipeline(source, lambda image: center_view(image, image_size), config.batch_size)
    step = tf.function(model.eval_step)
    totals = {}
    for batch in dataset:
        for k, v in step(batch).items():
            v = v.numpy()
            if getattr(model, "multi_label", False):
                totals.setdefault(k, []).append(v)
            else:
                totals[k] = totals.get(k, 0.0) + float(v)
    if getattr(model, "multi_label", False):
        return {k: np.concatenate(v) for k, v in totals.items()}
    return totals


# EvalConfig fields that do not change what probe or fine-tuning training computes (where the data is, kNN's
# settings, the split scored afterwards): a continued evaluation may give them differently.
NOT_TRAINING_SETTINGS = {"data_dir", "download", "resume_dir", "eval_split", "k", "temperature",
                         "knn_train_examples", "label_fraction"}


def _training_state(objects, strategy, config, protocol, run, extra=None):
    """Where probe or fine-tuning training keeps its state after every epoch, as train.py does: a run directory
    (config.resume_dir/PROTOCOL_DATASET_RUN) holding the settings and a checkpoint of `objects`; None without
    a resume_dir. `objects` names the models and optimizer explicitly: a Keras model's list of sub-models is not
    tracked by tf.train.Checkpoint (their BatchNorm statistics would be left out)."""
    if not config.resume_dir:
        return None
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise PSLError("--resume_dir keeps evaluation state on one machine; leave it out with multi_worker.")
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_TRAINING_SETTINGS}
    settings.update(protocol=protocol, run=run.name, backbone=os.path.abspath(run.backbone_path), **(extra or {}))
    folder = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{protocol}_{config.dataset}_{run.name}")
    run_dir = RunDirectory(os.path.join(config.resume_dir, folder), flag="--resume_dir")
    return run_dir, json.loads(json.dumps(settings)), TFCheckpointer(run_dir.checkpoint_dir, **objects)


def fit(model, strategy, source, image_size, config, verbose=1, label="", saved=None):
    """Trains `model.train_step` for config.epochs on (augmented view, label) batches of `source`, in the
    trainer's epoch loop; with a `_training_state`, continues after the epochs it holds and saves every epoch
    (the data order depends on (seed, epoch) only, so a continued run draws the batches an unbroken one would)."""
    steps = _steps(config, source)
    step = loop.distributed_step(strategy, model.train_step)
    state = None
    if saved:
        run_dir, settings, checkpointer = saved
        state = run_dir.open(settings, resume=True, resumable_fields=set()) or RunState(settings)
        run_dir.prepare()
        if state.checkpoint:
            checkpointer.restore(state.checkpoint)
            if verbose:
                print(f"{label}: continuing after epoch {state.epoch} ({run_dir.path})")

    def metrics(totals):
        losses = [v / totals["count"] for k, v in totals.items() if k.startswith("loss")]
        accuracies = [v / totals["count"] for k, v in totals.items() if k.startswith("correct")]
        return [("loss", float(np.mean(losses))), ("best_train_acc", max(accuracies, default=0.0))]

    for epoch in range(state.epoch if state else 0, config.epochs):
        seed = derived_seed(config.seed, PROBE_DATA_SEED, epoch)
        dataset = loop.distributed_dataset(strategy, lambda ctx: data_lib.training_pipeline(
            source, lambda image, label_, s: (train_view(image, s, image_size), label_), config.batch_size,
            seed, ctx))
        if verbose:
            print(f"{label} epoch {epoch + 1}/{config.epochs}")
        loop.run_epoch(step, iter(dataset), steps, {}, verbose=verbose, metrics=metrics,
                       non_finite=lambda i, loss: f"{label}: the loss diverged ({loss}); lower --lr.")
        if state:
            state.record(1, epoch + 1, 0, None, checkpointer.save())
            run_dir.write_state(state)


# --- protocols --------------------------------------------------------------------------------------


def all_blocks(run, config, strategy, sources=None, verbose=1):
    """Linear probe top-1 (or mAP) per block; returns {"B1": ..., ..., "geometry": ...}."""
    train, held_out = sources or load_sources(config)
    with strategy.scope():
        backbone = load_backbone(run)
        image_size = check_resolution(backbone, train, run.name)
        model = AllBlocksProbe(backbone, image_size, train.num_classes, config.batch_size,
                               config.weight_decay, config.blocks, multi_label=train.multi_label, seed=config.seed)
        _compile(model, config, _steps(config, train),
                 [v for head in model.heads for v in head.trainable_variables], LINEAR_LR)
    fit(model, strategy, train, image_size, config, verbose, label=f"[{run.name}] linear probes",
        saved=_training_state({**{f"head_{name}": head for name, head in zip(model.block_names, model.heads)},
                               "optimizer": model.optimizer}, strategy, config, "linear", run,
                              {"dataset_name": train.name}))
    totals = evaluate(model, held_out, image_size, config)
    result = {"geometry": model.geometry, "metric": "mAP" if train.multi_label else "top1"}
    for name in model.block_names:
        if train.multi_label:
            result[name] = mean_average_precision(totals["labels"], totals[f"scores_{name}"])
        else:
            result[name] = totals[f"top1_{name}"] / totals["count"]
            result[f"{name}_top5"] = totals[f"top5_{name}"] / totals["count"]
    return result


def knn(run, config, sources=None, verbose=1):
    """Weighted kNN accuracy per block (global-average-pooled, cosine) with config.k neighbours."""
    return knn_by_k(run, config, [config.k], sources, verbose)[config.k]


def knn_by_k(run, config, ks, sources=None, verbose=1):
    """{k: {block: accuracy}} for several neighbour counts from one feature extraction."""
    train, held_out = sources or load_sources(config)
    backbone = load_backbone(run)
    image_size = check_resolution(backbone, train, run.name)
    if verbose:
        print(f"[{run.name}] kNN: features of {config.train_split} and {config.eval_split}")
    bank_size = min(train.num_examples, config.knn_train_examples or train.num_examples)
    if max(ks) > bank_size:
        raise PSLError(f"--k={max(ks)} is more neighbours than the kNN bank holds ({bank_size} examples of "
                       f"{train.name} {config.train_split}); give --k={bank_size} or fewer, or a larger bank "
                       f"(--train_split, --knn_train_examples).")
    bank, bank_labels = knn_lib.extract_features(backbone, train, image_size, config.blocks, config.batch_size,
                                                 limit=config.knn_train_examples, verbose=verbose)
    queries, query_labels = knn_lib.extract_features(backbone, held_out, image_size, config.blocks,
                                                     config.batch_size, verbose=verbose)
    classes = max(train.num_classes, held_out.num_classes)
    return {k: {b: knn_lib.knn_accuracy(bank[b], bank_labels, queries[b], query_labels, classes, k,
                                        config.temperature) for b in config.blocks} for k in ks}


def balanced_subset(labels, fraction, seed, num_classes=None):
    """Indices of a class-balanced subset: round(fraction * N / classes) examples of every class."""
    labels = np.asarray(labels)
    num_classes = num_classes or int(labels.max()) + 1
    per_class = max(1, int(round(fraction * len(labels) / num_classes)))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise PSLError(f"Class {c} has {len(members)} examples, fewer than the {per_class} that "
                           f"--label_fraction={fraction} asks of every class.")
        chosen.append(np.sort(rng.permutation(members)[:per_class]))
    return np.sort(np.concatenate(chosen))


class FineTuneClassifier(keras.Model):
    """The whole backbone plus a new linear head on pooled B5, all trained (semi-supervised protocol)."""

    def __init__(self, backbone, num_classes, global_batch_size, weight_decay=5e-4, seed=0, **kwargs):
        super().__init__(name=kwargs.pop("name", "fine_tune"), **kwargs)
        self.backbone = backbone
        self.pool = layers.GlobalAveragePooling2D()
        initializer = keras.initializers.GlorotUniform(derived_seed(seed, PROBE_HEAD_SEED))
        self.classifier = layers.Dense(num_classes, dtype="float32", kernel_initializer=initializer)
        self.num_classes = num_classes
        self.global_batch_size = global_batch_size
        self.weight_decay = weight_decay

    def call(self, images, training=False):
        return self.classifier(self.pool(self.backbone(images, training=training)["B5"]))

    def train_step(self, data):
        images, labels = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.backbone.trainable_variables + self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            loss = ops.sum(per_example) / self.global_batch_size
            loss += optim.l2_penalty(variables, self.weight_decay, replicas)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"count": ops.cast(ops.shape(images)[0], "float32"), "loss": ops.sum(per_example),
                "correct": ops.sum(top_k_correct(labels, logits, 1))}

    def eval_step(self, data):
        images, labels = data
        logits = self(images, training=False)
        return {"count": ops.cast(ops.shape(images)[0], "float32"),
                "top1": ops.sum(top_k_correct(labels, logits, 1)),
                "top5": ops.sum(top_k_correct(labels, logits, min(5, self.num_classes)))}


def read_label_ids(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as err:
        raise PSLError(f"--label_ids_file: cannot read {path} ({err}).") from None


def semi(run, config, strategy, fraction, sources=None, verbose=1):
    """Fine-tunes on a class-balanced `fraction` of the labelled training split; top-1 and top-5."""
    train, held_out = sources or load_sources(config)
    if train.multi_label:
        raise PSLError("--probe semi needs a single-label dataset.")
    if config.label_ids_file:
        wanted = read_label_ids(config.label_ids_file)
        ids = train.example_ids()
        indices = np.flatnonzero(np.isin(ids, wanted))
        missing = sorted(set(wanted) - set(ids[indices].tolist()))
        if missing:
            raise PSLError(f"--label_ids_file: {len(missing)} of {len(wanted)} ids are not in {train.name} "
                           f"{train.split} (e.g. {', '.join(missing[:3])}).")
    else:
        indices = balanced_subset(train.labels(), fraction, config.seed, train.num_classes)
    subset = train.subset(indices)
    with strategy.scope():
        backbone = load_backbone(run)
        image_size = check_resolution(backbone, train, run.name)
        backbone.trainable = True
        model = FineTuneClassifier(backbone, train.num_classes, config.batch_size, config.weight_decay,
                                   seed=config.seed)
        model(np.zeros((1, image_size, image_size, 3), "float32"))
        sub_config = dataclasses.replace(config, batch_size=min(config.batch_size, len(indices)))
        _compile(model, sub_config, _steps(sub_config, subset),
                 backbone.trainable_variables + model.classifier.trainable_variables, SEMI_LR)
    model.global_batch_size = sub_config.batch_size
    fit(model, strategy, subset, image_size, sub_config, verbose,
        label=f"[{run.name}] fine-tune on {len(indices)} labels ({fraction:g})",
        saved=_training_state({"backbone": model.backbone, "classifier": model.classifier,
                               "optimizer": model.optimizer}, strategy, sub_config, "semi", run,
                              {"fraction": fraction, "labelled_examples": int(len(indices))}))
    totals = evaluate(model, held_out, image_size, sub_config)
    return {"fraction": fraction if not config.label_ids_file else None, "labelled_examples": int(len(indices)),
            "top1": totals["top1"] / totals["count"], "top5": totals["top5"] / totals["count"]}
