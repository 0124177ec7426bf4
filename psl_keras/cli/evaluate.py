"""Evaluate trained backbones with the paper's protocols and put runs side by side.

  psl-evaluate --probe all-blocks --runs runs/rot_e2e,runs/rot_psl --data_dir ../shared/tfds
  psl-evaluate --probe knn --runs runs/rot_psl --k 200 --temperature 0.07
  psl-evaluate --probe semi --label_fraction 0.01,0.1 --runs runs/rot_psl
  psl-evaluate --probe transfer --dataset voc2007 --runs runs/rot_psl

Each call writes results.md / results.json, a CSV and a PNG per table into --output_dir.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from psl_keras.backbones import BLOCK_NAMES  # noqa: E402
from psl_keras.config import SCHEDULES, STRATEGIES  # noqa: E402
from psl_keras.cli import define_version_flag, start  # noqa: E402
from psl_keras.ranges import (Range, define_number, define_number_list, non_negative, non_negative_int,  # noqa: E402
                              positive, positive_int)

FLAGS = flags.FLAGS
define_version_flag()
PROBES = ["all-blocks", "knn", "semi", "transfer"]

flags.DEFINE_enum("probe", "all-blocks", PROBES, "Evaluation protocol.")
flags.DEFINE_string("runs", None, "Run directories (or .keras files), comma-separated; NAME=PATH names a row.")
flags.DEFINE_string("dataset", "cifar10", "TFDS dataset (or folder:PATH); for transfer, the target dataset.")
flags.DEFINE_string("data_dir", "", "TFDS data directory.")
flags.DEFINE_string("train_split", "train", "Split the probes train on (and the kNN bank).")
flags.DEFINE_string("eval_split", "test", "Split the probes are scored on.")
flags.DEFINE_bool("download", True, "Download and prepare a TFDS dataset missing from --data_dir.")
flags.DEFINE_enum("on_bad_image", "skip", ["skip", "error"], "Image folders: files that cannot be decoded are left "
                  "out and named (skip) or stop the evaluation (error).")
flags.DEFINE_string("output_dir", "eval", "Where tables and plots are written.")
flags.DEFINE_string("resume_dir", "", "Folder where probe and fine-tuning training keep their state after every "
                    "epoch; the same command again continues an interrupted evaluation from its last finished epoch.")
define_number("epochs", 10, "Probe / fine-tuning epochs.", positive_int())
define_number("steps_per_epoch", 0, "Cap on steps per epoch (0: full passes), for smoke runs.", non_negative_int())
define_number("batch_size", 256, "Global batch size.", positive_int())
define_number("seed", 0, "Seed of every random choice (augmentation, subsets).", Range(0, 2**31 - 1, integer=True))
define_number("lr", None, "Learning rate; default 0.01 for linear heads (Goyal et al.; 0.1 overshoots "
              "on ~9k-dim inputs), 0.1 for semi (whole network).", positive())
define_number("weight_decay", 5e-4, "L2 weight decay on kernels.", non_negative())
flags.DEFINE_enum("schedule", "step", list(SCHEDULES), "Learning-rate schedule.")
flags.DEFINE_string("schedule_pattern", "2,1,1", "Step schedule segments (x0.1 at each boundary).")
flags.DEFINE_string("blocks", ",".join(BLOCK_NAMES), "Blocks to probe.")
define_number_list("k", [200], "kNN: neighbours; several values (e.g. 20,200) share one feature extraction.",
                   positive_int())
define_number("temperature", 0.07, "kNN: temperature of the vote weights exp(sim / T).", positive())
define_number("knn_train_examples", 0, "kNN: size of the bank from --train_split (0: all of it).", non_negative_int())
define_number_list("label_fraction", [0.01, 0.1], "semi: labelled fractions, comma-separated.",
                   Range(0, 1, low_open=True))
flags.DEFINE_string("label_ids_file", "", "semi: file of example ids (one per line) instead of a fraction.")
flags.DEFINE_enum("strategy", "default", list(STRATEGIES), "tf.distribute strategy.")
define_number("cpu_replicas", 0, "Split the CPU into this many logical devices.", Range(0, 256, integer=True))


def _neighbours():
    """The --k values (positive integers, checked when parsed) in the order given, without repeats."""
    return list(dict.fromkeys(FLAGS.k))


def _learning_rate():
    """--lr, or None for the protocol's default (protocols.LINEAR_LR = 0.01 for linear heads on ~9k-dim pooled
    features: on CIFAR-10 rotation runs 0.1 left the probe loss at ~13 after 2 epochs and cost 2-4 points per
    block; protocols.SEMI_LR = 0.1 for semi)."""
    return FLAGS.lr


def _config():
    from psl_keras.evaluation.protocols import EvalConfig
    from psl_keras.errors import PSLError

    blocks = tuple(b.strip() for b in FLAGS.blocks.split(",") if b.strip())
    unknown = [b for b in blocks if b not in BLOCK_NAMES]
    if unknown or not blocks:
        raise PSLError(f"--blocks: {', '.join(unknown) or 'none given'}; choose from {', '.join(BLOCK_NAMES)}.")
    neighbours = _neighbours()
    return EvalConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, train_split=FLAGS.train_split,
        eval_split=FLAGS.eval_split, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        batch_size=FLAGS.batch_size, seed=FLAGS.seed, lr=_learning_rate(), weight_decay=FLAGS.weight_decay,
        schedule=FLAGS.schedule, schedule_pattern=FLAGS.schedule_pattern, blocks=blocks, k=neighbours[0],
        temperature=FLAGS.temperature, knn_train_examples=FLAGS.knn_train_examples,
        label_ids_file=FLAGS.label_ids_file, on_bad_image=FLAGS.on_bad_image, download=FLAGS.download,
        resume_dir=FLAGS.resume_dir,
    )


def run_evaluation():
    import keras

    from psl_keras import distribute
    from psl_keras.errors import PSLError
    from psl_keras.evaluation import protocols, report
    from psl_keras.rundir import parse_runs

    if not FLAGS.runs:
        raise PSLError("--runs is required: one or more run directories written by train.py.")
    config = _config()  # flag errors first: they need no files
    runs = parse_runs(FLAGS.runs)
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.cpu_replicas)
    keras.utils.set_random_seed(config.seed)
    sources = protocols.load_sources(config)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    settings.update(probe=FLAGS.probe, strategy=FLAGS.strategy)
    if config.lr is None:  # record the rate the protocol used
        settings["lr"] = protocols.SEMI_LR if FLAGS.probe == "semi" else protocols.LINEAR_LR
    dataset = f"{config.dataset} {config.eval_split}"
    tables = {}
    if FLAGS.probe in ("all-blocks", "transfer"):
        rows = []
        metric = "mAP" if sources[0].multi_label else "top-1"
        name = "transfer" if FLAGS.probe == "transfer" else "linear"
        title = f"{'Transfer: ' if name == 'transfer' else ''}linear probe {metric} (%) by block, {dataset}"
        tables[name] = {"title": title, "rows": rows, "columns": list(config.blocks)}
        for run in runs:
            result = protocols.all_blocks(run, config, strategy, sources)
            rows.append({"run": run.name, **{b: result.get(b) for b in config.blocks}})
            settings.setdefault("pooling", result["geometry"])
            paths = report.write_report(FLAGS.output_dir, tables, settings)  # rows survive a later failure
    elif FLAGS.probe == "knn":
        neighbours = _neighbours()
        settings["k"] = neighbours
        for k in neighbours:
            title = f"kNN top-1 (%) by block, k={k}, T={config.temperature}, {dataset}"
            tables["knn" if len(neighbours) == 1 else f"knn_k{k}"] = {
                "title": title, "rows": [], "columns": list(config.blocks)}
        for run in runs:
            result = protocols.knn_by_k(run, config, neighbours, sources)
            for k, table in zip(neighbours, tables.values()):
                table["rows"].append({"run": run.name, **result[k]})
            paths = report.write_report(FLAGS.output_dir, tables, settings)
    else:  # semi
        fractions = list(FLAGS.label_fraction)  # each in (0, 1], checked when parsed
        if config.label_ids_file:
            fractions = fractions[:1]  # the ids file fixes the subset; one fine-tuning per run
        rows = []
        columns = [f"{m}@{f:g}" for f in fractions for m in ("top1", "top5")]
        tables["semi"] = {"title": f"Semi-supervised fine-tuning (%), {dataset}", "rows": rows,
                          "columns": columns, "plot": False}
        for run in runs:
            row = {"run": run.name}
            for fraction in fractions:
                result = protocols.semi(run, config, strategy, fraction, sources)
                row[f"top1@{fraction:g}"] = result["top1"]
                row[f"top5@{fraction:g}"] = result["top5"]
            rows.append(row)
            paths = report.write_report(FLAGS.output_dir, tables, settings)
    with open(paths["results.md"]) as f:
        print(f.read())
    print(f"Written: {', '.join(sorted(paths.values()))}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    import tensorflow as tf

    from psl_keras.errors import PSLError

    try:
        run_evaluation()
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except tf.errors.ResourceExhaustedError:
        print(f"error: out of memory at --batch_size={FLAGS.batch_size}; lower --batch_size.", file=sys.stderr)
        return 2
    except tf.errors.DataLossError as err:
        print(f"error: the dataset files are damaged ({err.message.splitlines()[0]}). Prepare the dataset "
              f"again in --data_dir.", file=sys.stderr)
        return 2
    return 0


def run():
    """The psl-evaluate command."""
    start(main, __doc__)


if __name__ == "__main__":
    run()
