"""Train a backbone with Progressive Stage-wise Learning.

  psl-train --task rotation --config cifar10_small --data_dir ../shared/tfds --output_dir runs/rot_psl
  psl-train --task rotation --mode e2e --strategy mirrored ...
  psl-train --resume --output_dir runs/rot_psl ...      # continue after the last finished epoch

A --config preset fills in the settings; flags given explicitly override it.
"""

import dataclasses
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# --deterministic has to reach TensorFlow before it loads: multi-threaded CPU kernels sum in an order that varies
# from run to run, even with oneDNN off and op determinism on (benchmarks/determinism.py), so the thread pools
# get one thread each and oneDNN is off, all fixed when the runtime starts.
if any(arg in ("--deterministic", "--deterministic=true", "--deterministic=True", "--deterministic=1")
       for arg in sys.argv[1:]):
    from psl_keras.config import DETERMINISTIC_ENV

    os.environ.update(DETERMINISTIC_ENV)
# --backend picks Keras' backend, which Keras reads once, when it is first imported.
for _i, _arg in enumerate(sys.argv[1:], start=1):
    _value = _arg.split("=", 1)[1] if _arg.startswith("--backend=") else (
        sys.argv[_i + 1] if _arg == "--backend" and _i + 1 < len(sys.argv) else None)
    if _value in ("tensorflow", "jax"):  # anything else is refused by the flag's parser
        os.environ["KERAS_BACKEND"] = _value

from absl import app, flags, logging  # noqa: E402

from psl_keras.backbones import BACKBONES  # noqa: E402
from psl_keras.cli import define_version_flag, start  # noqa: E402
from psl_keras.config import PRESETS, TrainConfig  # noqa: E402
from psl_keras.ranges import define_number  # noqa: E402
from psl_keras.tasks import TASKS, option_spec  # noqa: E402

FLAGS = flags.FLAGS
define_version_flag()
_DEFAULTS = TrainConfig()

flags.DEFINE_enum("config", "none", ["none", *PRESETS], "Preset; explicit flags override it.")
flags.DEFINE_bool("resume", False, "Continue the run in --output_dir from its last finished epoch.")
# One flag per TrainConfig field, from its default, help, choices and allowed range: the config is the only list
# of settings, and every value is checked when the flags are parsed, before anything runs.
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float, str: flags.DEFINE_string}
_CHOICES = {"task": sorted(TASKS), "backbone": sorted(BACKBONES)}  # registries the config module cannot import


def _define(name, default, help, allowed=None):
    if isinstance(allowed, (tuple, list)):
        flags.DEFINE_enum(name, default, list(allowed), help)
    elif allowed is not None:
        define_number(name, default, help, allowed)
    else:
        _DEFINE[type(default)](name, default, help)


for _field in dataclasses.fields(TrainConfig):
    if _field.name == "task_options":
        continue
    _define(_field.name, getattr(_DEFAULTS, _field.name), _field.metadata["help"],
            _CHOICES.get(_field.name) or _field.metadata.get("choices") or _field.metadata.get("allowed"))

# Each task's own settings become --{task}_{option} flags, so a new task needs no edit here.
for _task_name, _task in TASKS.items():
    for _option in _task.OPTIONS:
        _default, _help, _allowed = option_spec(_task, _option)
        _define(f"{_task_name}_{_option}", _default, f"[{_task_name}] {_help}", _allowed)


def explicit_settings():
    """The TrainConfig fields the user set on the command line."""
    names = [name for name in TrainConfig().to_dict() if name in FLAGS]
    settings = {name: FLAGS[name].value for name in names if FLAGS[name].present}
    if "backend" not in settings and os.environ.get("KERAS_BACKEND") == "jax":
        settings["backend"] = "jax"  # KERAS_BACKEND=jax python train.py ... means --backend jax
    task = settings.get("task", FLAGS.task)
    if task in TASKS:
        settings["task_options"] = {
            option: FLAGS[f"{task}_{option}"].value
            for option in TASKS[task].OPTIONS
            if FLAGS[f"{task}_{option}"].present
        }
    return settings


def _tensorflow_error(name):
    """tf.errors.NAME where TensorFlow is loaded, else a class nothing raises (--backend jax without TF)."""
    tf = sys.modules.get("tensorflow")
    return getattr(tf.errors, name) if tf is not None and hasattr(tf, "errors") else type(name, (Exception,), {})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep tf.distribute's per-step INFO lines off the progress bar
    # SIGTERM (kill, timeout, a scheduler's preemption, docker stop) takes Ctrl-C's path: the steps done are
    # saved and --resume continues, where the default action would drop everything since the last checkpoint.
    from psl_keras.training import loop

    signal.signal(signal.SIGTERM, loop.request_stop)
    import keras

    from psl_keras.config import resolve_config
    from psl_keras.errors import PSLError

    chief = True
    try:
        config = resolve_config(FLAGS.config, explicit_settings())
        if config.backend != keras.backend.backend():
            raise PSLError(f"--backend {config.backend}, but Keras was loaded on {keras.backend.backend()} "
                           f"(KERAS_BACKEND={os.environ.get('KERAS_BACKEND', '')!r}); give one of them only.")
        if config.backend == "jax":  # no TensorFlow needed
            from psl_keras.training.trainer import JaxTrainer

            summary = JaxTrainer(config, resume=FLAGS.resume).train()
        else:
            from psl_keras import distribute
            from psl_keras.training.trainer import Trainer

            strategy = distribute.make_strategy(config.strategy, config.cpu_replicas)
            chief = distribute.is_chief(strategy)
            summary = Trainer(config, strategy, resume=FLAGS.resume).train()
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except _tensorflow_error("ResourceExhaustedError"):
        print(f"error: out of memory at --batch_size={FLAGS.batch_size}. Lower --batch_size (it is the global "
              f"batch) or use more replicas, then continue with --resume.", file=sys.stderr)
        return 2
    except _tensorflow_error("DataLossError") as err:
        print(f"error: the dataset files are damaged ({err.message.splitlines()[0]}). Prepare the dataset "
              f"again in --data_dir, then continue with --resume.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nInterrupted. Continue with the same flags plus --resume (run: {FLAGS.output_dir}).",
              file=sys.stderr)
        return 130
    if summary is not None and chief:
        for s in summary["stages"]:
            print(f"S{s['stage']} ({s['task_level']}): loss {s['final_loss']:.4f}, "
                  f"accuracy {s['final_accuracy']:.4f}, {s['wall_time_s']:.0f}s")
        print(f"Backbone saved to {os.path.join(config.output_dir, 'backbone.keras')}")
    return 0


def run():
    """The psl-train command."""
    start(main, __doc__)


if __name__ == "__main__":
    run()
