"""Train a backbone with Progressive Stage-wise Learning.

  python train.py --task rotation --config cifar10_small --data_dir ../shared/tfds --output_dir runs/rot_psl
  python train.py --task rotation --mode e2e --strategy mirrored ...
  python train.py --resume --output_dir runs/rot_psl ...      # continue after the last finished epoch

A --config preset fills in the settings; flags given explicitly override it.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from psl_keras.config import PRESETS, TrainConfig  # noqa: E402
from psl_keras.tasks import TASKS  # noqa: E402

FLAGS = flags.FLAGS
_DEFAULTS = TrainConfig()

flags.DEFINE_string("config", "none", f"Preset: none, {', '.join(PRESETS)}. Explicit flags override it.")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last finished epoch.")
flags.DEFINE_string("task", _DEFAULTS.task, "Pretext task (psl_keras.tasks.TASKS).")
flags.DEFINE_enum("mode", _DEFAULTS.mode, ["psl", "sl", "psl_f", "e2e"], "Training mode.")
flags.DEFINE_string("backbone", _DEFAULTS.backbone, "Backbone (psl_keras.backbones.BACKBONES).")
flags.DEFINE_float("width", _DEFAULTS.width, "Backbone width multiplier.")
flags.DEFINE_enum("stem", _DEFAULTS.stem, ["auto", "imagenet", "cifar"], "Backbone stem; auto: by image size.")
flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Side of the square training input.")
flags.DEFINE_bool("sync_bn", _DEFAULTS.sync_bn, "Synchronise BatchNorm statistics across replicas.")
flags.DEFINE_integer("head_hidden", _DEFAULTS.head_hidden, "Hidden units of the stage heads.")
flags.DEFINE_string("stage_windows", _DEFAULTS.stage_windows, "Stage windows over blocks B1..B5.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "TFDS dataset name, or folder:PATH.")
flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "TFDS data directory (default: TFDS's own).")
flags.DEFINE_string("split", _DEFAULTS.split, "Split to train on.")
flags.DEFINE_integer("epochs_per_stage", _DEFAULTS.epochs_per_stage, "Epochs of each stage.")
flags.DEFINE_integer("e2e_epochs", _DEFAULTS.e2e_epochs, "E2E epochs; 0: epochs_per_stage x stages.")
flags.DEFINE_integer("steps_per_epoch", _DEFAULTS.steps_per_epoch, "Cap on steps per epoch (0: full).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size over all replicas.")
flags.DEFINE_string("optimizer", _DEFAULTS.optimizer, "Optimizer: sgd.")
flags.DEFINE_float("lr", _DEFAULTS.lr, "Base learning rate of each stage.")
flags.DEFINE_float("momentum", _DEFAULTS.momentum, "SGD momentum.")
flags.DEFINE_bool("nesterov", _DEFAULTS.nesterov, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "L2 weight decay on kernels (not biases/BN).")
flags.DEFINE_enum("schedule", _DEFAULTS.schedule, ["step", "cosine", "constant"], "LR schedule per stage.")
flags.DEFINE_string("schedule_pattern", _DEFAULTS.schedule_pattern, "Step schedule segments (x0.1 each).")
flags.DEFINE_float("warmup_epochs", _DEFAULTS.warmup_epochs, "Linear warm-up epochs (cosine schedule).")
flags.DEFINE_integer("shuffle_buffer", _DEFAULTS.shuffle_buffer, "Shuffle buffer (examples).")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of every random choice.")
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile, "Compile the train step with XLA.")
flags.DEFINE_bool("mixed_precision", _DEFAULTS.mixed_precision, "Mixed precision (float16 GPU, bfloat16 CPU).")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy,
                  ["default", "one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_integer("cpu_replicas", _DEFAULTS.cpu_replicas,
                     "Split the CPU into this many logical devices (multi-replica runs without GPUs).")
flags.DEFINE_string("output_dir", _DEFAULTS.output_dir, "Run directory.")
flags.DEFINE_integer("checkpoint_every_steps", _DEFAULTS.checkpoint_every_steps,
                     "Also checkpoint every N steps inside an epoch (0: at epoch ends only).")
flags.DEFINE_bool("knn_monitor", _DEFAULTS.knn_monitor,
                  "Report kNN accuracy of the stage's last block on --knn_split after every epoch.")
flags.DEFINE_string("knn_split", _DEFAULTS.knn_split, "Held-out split of the kNN monitor.")
flags.DEFINE_integer("knn_k", _DEFAULTS.knn_k, "kNN monitor: neighbours.")
flags.DEFINE_float("knn_temperature", _DEFAULTS.knn_temperature, "kNN monitor: vote temperature.")
flags.DEFINE_integer("knn_bank_size", _DEFAULTS.knn_bank_size, "kNN monitor: training examples in the bank.")

# Each task's own settings become --{task}_{option} flags, so a new task needs no edit here.
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
for _task_name, _task in TASKS.items():
    for _option, (_default, _help) in _task.OPTIONS.items():
        _DEFINE[type(_default)](f"{_task_name}_{_option}", _default, f"[{_task_name}] {_help}")


def explicit_settings():
    """The TrainConfig fields the user set on the command line."""
    names = [name for name in TrainConfig().to_dict() if name in FLAGS]
    settings = {name: FLAGS[name].value for name in names if FLAGS[name].present}
    task = settings.get("task", FLAGS.task)
    if task in TASKS:
        settings["task_options"] = {
            option: FLAGS[f"{task}_{option}"].value
            for option in TASKS[task].OPTIONS
            if FLAGS[f"{task}_{option}"].present
        }
    return settings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep tf.distribute's per-step INFO lines off the progress bar
    import tensorflow as tf

    from psl_keras import distribute
    from psl_keras.config import resolve_config
    from psl_keras.errors import PSLError
    from psl_keras.training import Trainer

    try:
        config = resolve_config(FLAGS.config, explicit_settings())
        strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
        summary = Trainer(config, strategy, resume=FLAGS.resume).train()
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except tf.errors.ResourceExhaustedError:
        print(f"error: out of memory at --batch_size={FLAGS.batch_size}. Lower --batch_size (it is the global "
              f"batch) or use more replicas, then continue with --resume.", file=sys.stderr)
        return 2
    except tf.errors.DataLossError as err:
        print(f"error: the dataset files are damaged ({err.message.splitlines()[0]}). Prepare the dataset "
              f"again in --data_dir, then continue with --resume.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted. Continue with the same flags plus --resume (run: {FLAGS.output_dir}).",
              file=sys.stderr)
        return 130
    if summary is not None and distribute.is_chief(strategy):
        for s in summary["stages"]:
            print(f"S{s['stage']} ({s['task_level']}): loss {s['final_loss']:.4f}, "
                  f"accuracy {s['final_accuracy']:.4f}, {s['wall_time_s']:.0f}s")
        print(f"Backbone saved to {os.path.join(config.output_dir, 'backbone.keras')}")
    return 0


if __name__ == "__main__":
    app.run(main)
