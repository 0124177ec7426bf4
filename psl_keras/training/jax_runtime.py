"""Training under Keras on JAX: `JaxRuntime`, the runtime `psl_keras.training.trainer.Trainer` uses for
`backend="jax"` (the stage sequence, run directory, progress bar, logs and --resume are `Trainer`'s, written once):

- the step is `jax_step.JaxStageStep`, compiled once per stage, over the stage's variables only;
- the data is a split held in device memory (an array dataset, `--dataset arrays:FILE`, or a TFDS split /
  folder read once where TensorFlow is installed); each epoch's order and each example's seed come
  from NumPy generators seeded by (run seed, stage, epoch, step), and the task's examples
  (`Task.sample`, `prepare`, `finish`) are made on the device, compiled;
- checkpoints are .npz files of the backbone's, head's and optimizer's variables, written atomically (the two
  newest kept), so a killed run resumes exactly where its last checkpoint was;
- several local devices split each batch (`jax_step.data_parallel`): one process, one global batch.

Imports no TensorFlow: it trains where only JAX is installed. The backbones it writes are ordinary .keras
files: evaluate.py (TensorFlow) and the demo load them.
"""

import contextlib
import os

import jax
import keras
import numpy as np

import psl_keras
from psl_keras import optim
from psl_keras.data import arrays
from psl_keras.atomic import atomic_path
from psl_keras.training.callbacks import RunCSVLogger
from psl_keras.errors import PSLError
from psl_keras.training.jax_step import JaxStageStep, data_parallel, split_sharding
from psl_keras.rundir import LOG_FILE
from psl_keras.seeds import DATA_SEED, derived_seed

# TrainConfig settings that only the TensorFlow trainer has: refused rather than silently ignored.
TF_ONLY = {"knn_monitor": "the kNN monitor runs on TensorFlow; evaluate the stage backbones with evaluate.py",
           "mixed_precision": "mixed precision is not wired for JAX yet",
           "sync_bn": "one process computes BatchNorm over the whole batch already",
           "deterministic": "XLA's CPU and GPU steps are already repeatable run to run here"}


class JaxRuntime:
    """What training needs from JAX: the process's local devices, the split in device memory, the compiled step."""

    def __init__(self, strategy=None):
        if strategy is not None:
            raise PSLError("The JAX runtime takes no tf.distribute strategy: it uses the process's local JAX "
                           "devices.")
        if keras.backend.backend() != "jax":
            raise PSLError(f"--backend jax needs Keras on JAX, but Keras runs on {keras.backend.backend()}: set "
                           f"KERAS_BACKEND=jax before Keras is imported (train.py --backend jax does).")
        self.devices = jax.local_devices()
        self.replicas = len(self.devices)
        self.chief, self.worker = True, 0
        self.saves_inside_epochs = True
        self.stage_state = None
        self._compiled_schedule = (None, None)
        self._examples = jax.jit(self._make_examples, static_argnums=(0, 3))

    def validate(self, config, task):
        if config.strategy != "default":
            raise PSLError(f"--strategy={config.strategy} is a tf.distribute strategy; --backend jax uses every "
                           f"local device of its process ({self.replicas} here). Leave --strategy at default.")
        for name, why in TF_ONLY.items():
            if getattr(config, name):
                raise PSLError(f"--{name} is not available with --backend jax: {why}.")

    def scope(self):
        return contextlib.nullcontext()

    def set_up(self, config):
        pass  # seeds are set by Trainer._build; XLA needs nothing else

    def load_source(self, config, verbose=False):
        if config.dataset.startswith(arrays.PREFIX):
            return arrays.ArraySource.from_file(config.dataset[len(arrays.PREFIX):])
        try:
            import tensorflow  # noqa: F401  (reading TFDS or a folder needs it)
        except ImportError:
            raise PSLError(
                f"--dataset {config.dataset}: without TensorFlow, --backend jax reads array datasets. Export the "
                f"split once on a machine with TensorFlow: `python -m psl_keras.data --dataset {config.dataset} "
                f"--split {config.split} --out data.npz`, then pass --dataset arrays:data.npz.") from None
        from psl_keras import data as data_lib

        return data_lib.load_images(config.dataset, config.data_dir or None, config.split, config.on_bad_image,
                                    min_side=config.image_size, verbose=verbose, download=config.download)

    def place_source(self, source, config):
        """The split as arrays, its images in device memory (batches are gathered there)."""
        if not isinstance(source, arrays.ArraySource):
            image_source = source.in_memory()
            images, labels = image_source.arrays
            if images.ndim != 4:
                raise PSLError(f"{config.dataset}: --backend jax needs images of one size; resize them first.")
            source = arrays.ArraySource(images, labels, image_source.name, config.split, image_source.num_classes,
                                        image_source.class_names)
        height, width = source.image_shape[:2]
        if (height, width) != (config.image_size, config.image_size):
            raise PSLError(f"{source.name} images are {height}x{width}; --backend jax augments on the device at "
                           f"their own size, so --image_size must be {height} (or export resized images).")
        self.device_images = jax.device_put(source.images, self.devices[0])
        return source

    def start_stage(self, model):
        self.stage_state = _StageState(JaxStageStep(model, model.optimizer), self.devices)

    def step_function(self, model, config):
        return self.stage_state

    def epoch_batches(self, source, task, config, stage, epoch, skip_steps=0):
        order = np.random.default_rng(derived_seed(config.seed, DATA_SEED, stage.index, epoch)).permutation(
            source.num_examples)
        for step in range(skip_steps, len(order) // config.batch_size):
            ids = order[step * config.batch_size:(step + 1) * config.batch_size]
            # Each example's seed comes from (run seed, stage, epoch, step): a resumed epoch makes the examples
            # the unbroken one made for the same step.
            rng = np.random.default_rng([config.seed, DATA_SEED, stage.index, epoch, step])
            seeds = rng.integers(0, 2**32, (len(ids), 2), dtype=np.uint32)
            yield self._examples(task, ids, seeds, stage.level)

    def _make_examples(self, task, ids, seeds, level):
        """The task's examples of the images `ids`, made on the device with one implementation for both
        backends (`Task.sample`, `prepare`, `finish`)."""
        images = jax.numpy.take(self.device_images, ids, axis=0)
        params = jax.vmap(lambda seed: task.sample(seed, level, images.shape[1:3]))(seeds)
        inputs, labels = task.prepare(images, params, level)
        return task.finish(inputs, params, level), labels

    def learning_rate(self, model):
        self.stage_state.sync_iterations()
        schedule = getattr(model.optimizer, "_learning_rate", None)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return optim.current_learning_rate(model.optimizer)
        # Keras evaluates a schedule eagerly, and under JAX a warm-up cosine traces its branches again on every
        # call: 160 ms a step here (SimCLR's schedule), which made a SimCLR step on the H100 several times
        # slower than its compiled step. The schedule compiled once per stage gives the same value in microseconds.
        if self._compiled_schedule[0] is not schedule:
            self._compiled_schedule = (schedule, jax.jit(schedule))
        return float(self._compiled_schedule[1](model.optimizer.iterations.value))

    def sync_weights(self, model):
        self.stage_state.write_back()

    def checkpointer(self, directory, backbone, model):
        extra = {"task_state": model.task_state.weights} if model.task_state is not None else {}
        return NpzCheckpointer(directory, self.stage_state,
                               {"backbone": backbone.weights, "head": model.head.weights,
                                "optimizer": model.optimizer.variables, **extra})

    def restore_backbone(self, backbone, path):
        NpzCheckpointer.load(path, {"backbone": backbone.weights})

    def logging_callbacks(self, run_dir):
        return [RunCSVLogger(run_dir.file(LOG_FILE))]  # Keras' TensorBoard callback writes through tf.summary

    def summary(self, config):
        return {"name": "jax", "replicas": self.replicas,
                "devices": [f"{d.platform}:{d.id}" for d in self.devices]}

    def machine(self):
        import platform

        accelerators = [f"{d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip() for d in self.devices
                        if d.platform != "cpu"]
        return {"host": platform.node(), "cpu_cores": os.cpu_count(), "accelerators": accelerators,
                "backend": "jax", "versions": {"psl_keras": psl_keras.__version__, "jax": jax.__version__, "keras": keras.__version__}}


class _StageState:
    """The training state of one stage under JAX (`JaxStageStep`'s pure step threaded through calls).

    Called with a batch, it runs one step and returns the batch's sums, as the TensorFlow trainer's step does.
    The Keras variables are only written when `write_back` is called (checkpoints, exports)."""

    def __init__(self, step, devices):
        self.step = step
        self.devices = devices
        self.reset()

    def reset(self):
        """Takes the state from the Keras variables (after building or restoring them)."""
        state = self.step.initial_state()
        if len(self.devices) > 1:
            state = data_parallel(state, None, None, self.devices)[0]
        self.state = state

    def __call__(self, batch):
        inputs, labels = batch
        if len(self.devices) > 1:
            sharding = split_sharding(self.devices)
            inputs, labels = jax.device_put(inputs, sharding), jax.device_put(labels, sharding)
        self.state, sums = self.step.step(self.state, inputs, labels)
        return sums

    def write_back(self):
        self.step.write_back(self.state)

    def sync_iterations(self):
        """The optimizer's step counter (for the learning rate shown), without writing back the rest."""
        self.step.write_back_iterations(self.state)


class NpzCheckpointer:
    """A stage's checkpoints as .npz files: the variables of each group (backbone, head, optimizer) in order.

    `save` writes ckpt-N.npz atomically (temp file, fsync, rename) and keeps the two newest, like the
    TensorFlow trainer's CheckpointManager; state.json names the file."""

    KEEP = 2

    def __init__(self, directory, stage_state, groups):
        self.directory = directory
        self.stage_state = stage_state
        self.groups = groups

    def save(self):
        self.stage_state.write_back()
        os.makedirs(self.directory, exist_ok=True)
        numbers = self._numbers()
        path = os.path.join(self.directory, f"ckpt-{(numbers[-1] if numbers else 0) + 1}.npz")
        values = {f"{group}/{i}": np.asarray(keras.ops.convert_to_numpy(v.value))
                  for group, variables in self.groups.items() for i, v in enumerate(variables)}
        with atomic_path(path) as tmp:
            np.savez(tmp, **values)
        for number in self._numbers()[:-self.KEEP]:
            os.remove(os.path.join(self.directory, f"ckpt-{number}.npz"))
        return os.path.abspath(path)

    def restore(self, path):
        self.load(path, self.groups)
        self.stage_state.reset()

    @staticmethod
    def load(path, groups):
        try:
            with np.load(path) as stored:
                values = {key: stored[key] for key in stored.files}
        except (OSError, ValueError) as err:
            raise PSLError(f"--resume: cannot read checkpoint {path} ({err}). Start a new --output_dir.") from None
        for group, variables in groups.items():
            for i, variable in enumerate(variables):
                value = values.get(f"{group}/{i}")
                if value is None or tuple(value.shape) != tuple(variable.shape):
                    raise PSLError(f"--resume: checkpoint {path} does not match this run's {group} (variable "
                                   f"{variable.path}); it was written by another configuration. Start a new "
                                   f"--output_dir.")
                variable.assign(value)

    def _numbers(self):
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        return sorted(int(n[5:-4]) for n in names if n.startswith("ckpt-") and n.endswith(".npz")
                      and n[5:-4].isdigit())
