"""The stage-wise trainer (Algorithm 1): stages in order, each with its own head, optimizer and schedule.

One loop serves every strategy, multi-worker included (where Keras 3's `fit()` fails): a distributed
dataset per epoch, a `tf.function` that calls `strategy.run(stage_model.train_step)`, sums all-reduced for
logging, `keras.utils.Progbar` and a `keras.callbacks.CallbackList` (CSV, TensorBoard, user callbacks).

The run directory and its progress state are `psl_keras.rundir.RunDirectory` and `RunState`. What depends on
the Keras backend (devices, where the data lives, the step, checkpoints) is a runtime object: `TensorFlowRuntime`
here, `psl_keras.training.jax_runtime.JaxRuntime` for Keras on JAX (`config.backend` picks); everything else, the stage
sequence, resume, progress bar, NaN stop and kill points, is written once in `Trainer`.
"""


import dataclasses
import os
import platform
import time

import keras
import numpy as np

import psl_keras
from psl_keras import data as data_lib
from psl_keras import distribute, optim, stages
from psl_keras.training import loop
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.training.callbacks import RunCSVLogger
from psl_keras.config import DETERMINISTIC_ENV, TrainConfig
from psl_keras.errors import PSLError
from psl_keras.faults import kill_point
from psl_keras.lazy import tf
from psl_keras.rundir import (BACKBONE_FILE, LOG_FILE, TENSORBOARD_DIR, RunDirectory, RunState, stage_backbone_file,
                              stage_head_file)
from psl_keras.seeds import DATA_SEED, HEAD_SEED, derived_seed
from psl_keras.tasks import TASKS, build_task, complete_options

# Settings that may change when a run is resumed; anything else must match the saved run. lr among them: the
# way on after a NaN stop is a lower --lr from the last good checkpoint.
RESUMABLE_FIELDS = {"output_dir", "data_dir", "strategy", "cpu_replicas", "jit_compile", "revnet_recompute",
                    "checkpoint_every_steps",
                    "knn_monitor", "knn_split", "knn_k", "knn_temperature", "knn_bank_size", "lr"}


def steady_images_per_sec(step_rates):
    """A stage's throughput: the median of its steps' images/s. A median, not images over total time, so that
    one stalled step (a paused process, a machine busy elsewhere for a minute) does not pull down the figure
    of hundreds of steady ones. None for a stage without measured steps."""
    return float(np.median(step_rates)) if len(step_rates) else None


def stage_epochs(config):
    """Epochs of each stage of the plan, a list (--stage_epochs, else --epochs_per_stage for every window);
    E2E's single stage gets the whole PSL budget unless --e2e_epochs says else."""
    windows = stages.parse_windows(config.stage_windows)
    if config.stage_epochs:
        try:
            epochs = [int(v) for v in str(config.stage_epochs).split(",")]
        except ValueError:
            epochs = []
        if len(epochs) != len(windows) or min(epochs) < 1:
            raise PSLError(f"--stage_epochs={config.stage_epochs!r}: expected {len(windows)} positive integers, "
                           f"one per stage window ({config.stage_windows}), like 60,70,70.")
    else:
        epochs = [config.epochs_per_stage] * len(windows)
    if config.mode == "e2e":
        return [config.e2e_epochs or sum(epochs)]
    return epochs


def _upgrade_saved_config(saved):
    """A saved run's config with every task option filled in (legacy values for options it predates)."""
    if saved.get("task") not in TASKS:
        return saved
    return {**saved, "task_options": complete_options(saved["task"], saved.get("task_options", {}), saved=True)}


class Trainer:
    """Trains a backbone with PSL (or an ablation mode) and writes a run directory.

    Usage: `Trainer(config, strategy).train()` returns the summary dict (also written to summary.json).
    """

    def __init__(self, config: TrainConfig, strategy=None, callbacks=(), resume=False, verbose=1, source=None,
                 knn_source=None):
        """`source` / `knn_source` (`data.ImageSource`s) replace loading config.dataset's training split and
        the kNN monitor's held-out split, e.g. for synthetic data."""
        self.config = config
        self._given_source = source
        self._given_knn_source = knn_source
        self.extra_callbacks = list(callbacks)
        self.resume = resume
        self.runtime = runtime = make_runtime(config.backend, strategy)
        self.replicas, self.chief, self.worker = runtime.replicas, runtime.chief, runtime.worker
        self.verbose = verbose if self.chief else 0
        self.run_dir = RunDirectory(config.output_dir, self.chief, self.worker)
        self.config = config = dataclasses.replace(config, task_options=self._task_options(config))
        self._validate()

    # --- set-up ---------------------------------------------------------------------------------------
    def _task_options(self, c):
        """Every task option, recorded in the run's config so a later change of a default never changes
        the run. Resuming, the saved run's values fill in the options not given again (a run saved before
        an option existed keeps the value it trained with); a value given again must match, as any setting."""
        saved = self.run_dir.saved_config() if self.resume else None
        if saved and saved.get("task") == c.task:
            base = _upgrade_saved_config(saved)["task_options"]
        else:
            base = complete_options(c.task)
        return {**base, **c.task_options}

    def _validate(self):
        c = self.config
        c.check()  # ranges and choices, for library users (train.py checks its flags when parsing them)
        if c.batch_size % self.replicas:
            raise PSLError(
                f"--batch_size={c.batch_size} is the global batch and must divide evenly over "
                f"{self.replicas} replicas."
            )
        optim.parse_pattern(c.schedule_pattern)
        self.task = build_task(c.task, c.image_size, c.head_hidden, c.sync_bn, c.task_options)
        self.plan = stages.stage_plan(c.mode, self.task.num_levels, stages.parse_windows(c.stage_windows))
        self.epochs = dict(zip((s.index for s in self.plan), stage_epochs(c)))
        self.runtime.validate(c, self.task)

    def _build(self):
        c = self.config
        keras.utils.set_random_seed(c.seed)
        self.runtime.set_up(c)
        self.source = self.runtime.place_source(self._given_source or self._load_training_source(), c)
        if self.source.image_shape is not None and min(self.source.image_shape[:2]) < c.image_size / 2:
            raise PSLError(
                f"{self.source.name} images are {self.source.image_shape[0]}x{self.source.image_shape[1]}, "
                f"too small for --image_size={c.image_size}. Use --config=cifar10_small or a smaller "
                f"--image_size."
            )
        stem = None if c.stem == "auto" else c.stem
        with self.runtime.scope():
            self.backbone = build_backbone(c.backbone, c.image_size, stem=stem, width=c.width, sync_bn=c.sync_bn,
                                           recompute=c.revnet_recompute)
        self.blocks = backbone_blocks(self.backbone)

    def _load_training_source(self):
        c = self.config
        return self.runtime.load_source(c, verbose=self.verbose > 0)

    # --- files ----------------------------------------------------------------------------------------
    def _knn_monitor(self):
        """The kNN callback of --knn_monitor (built once; it must run before the loggers read the logs)."""
        if not hasattr(self, "_knn"):
            from psl_keras.evaluation.knn import KNNMonitor  # evaluation is optional for training

            c = self.config
            query = self._given_knn_source or data_lib.load_images(
                c.dataset, c.data_dir or None, c.knn_split, c.on_bad_image, min_side=c.image_size,
                verbose=self.verbose > 0, download=c.download)
            if not self.source.num_classes or not query.num_classes:
                raise PSLError(f"--knn_monitor needs class labels; {c.dataset} has none.")
            self._knn = KNNMonitor(self.backbone, self.source, query, c.image_size, c.knn_k,
                                   c.knn_temperature, bank_size=c.knn_bank_size, verbose=self.verbose)
        return self._knn

    def _callbacks(self, stage_model):
        callbacks = list(self.extra_callbacks)
        if self.chief and self.config.knn_monitor:
            callbacks.insert(0, self._knn_monitor())
        if self.chief:
            callbacks += self.runtime.logging_callbacks(self.run_dir)
        return keras.callbacks.CallbackList(callbacks, model=stage_model)

    # --- the loop -------------------------------------------------------------------------------------
    def _stage_model(self, stage, steps_per_epoch, epochs):
        c = self.config
        # Each head starts from its own seed, so a resumed run builds the same heads as an unbroken one.
        keras.utils.set_random_seed(derived_seed(c.seed, HEAD_SEED, stage.index))
        with self.runtime.scope():
            head = self.task.build_head(
                stage.level, self.blocks[stage.last_block - 1].output.shape[-1], name=f"g{stage.index}"
            )
            model = stages.StageModel(
                self.blocks, stage, head, self.task, c.batch_size, weight_decay=c.weight_decay
            )
            total_steps = steps_per_epoch * epochs
            schedule = optim.learning_rate_schedule(
                c.schedule,
                c.lr,
                total_steps,
                pattern=optim.parse_pattern(c.schedule_pattern),
                warmup_steps=int(c.warmup_epochs * steps_per_epoch),
            )
            optimizer = optim.build_optimizer(c.optimizer, schedule, c.momentum, c.nesterov)
            model.compile(optimizer=optimizer)  # wraps a LossScaleOptimizer under mixed_float16
            model.optimizer.build(model.stage_variables)
        self.runtime.start_stage(model)
        return model

    def _epoch_batches(self, stage, epoch, skip_steps=0):
        """The batches of one epoch of a stage, from step `skip_steps` on (the same ones an unbroken run sees)."""
        return self.runtime.epoch_batches(self.source, self.task, self.config, stage, epoch, skip_steps)

    def train(self):
        c = self.config
        state = self.run_dir.open(c.to_dict(), self.resume, RESUMABLE_FIELDS, upgrade=_upgrade_saved_config)
        self.run_dir.prepare()
        self._build()
        state = state or RunState(c.to_dict())
        state.config = c.to_dict()
        steps_per_epoch = data_lib.steps_per_epoch(self.source, c.batch_size, c.steps_per_epoch)
        run_start = time.time()
        global_epoch = sum(self.epochs[s.index] for s in self.plan if s.index < state.stage) + state.epoch

        if state.checkpoint:
            # Backbone weights from the last checkpoint; the head and optimizer too if the stage is unfinished.
            self.runtime.restore_backbone(self.backbone, state.checkpoint)

        for stage in self.plan:
            epochs = self.epochs[stage.index]
            if stage.index < state.stage:
                continue
            model = self._stage_model(stage, steps_per_epoch, epochs)
            checkpoint = self.runtime.checkpointer(self.run_dir.checkpoint_dir, self.backbone, model)
            if stage.index == state.stage and state.epoch >= epochs:
                # Trained, but the process may have died before the stage's result or files were written.
                checkpoint.restore(state.checkpoint)
                replayed = self._replay_epoch_end(model, state, global_epoch)
                result = next((s for s in state.stages if s["stage"] == stage.index), None)
                self._finish_stage(stage, model, state, result or self._recovered_result(
                    stage, state, steps_per_epoch, replayed.get("knn_accuracy")))
                continue
            resuming = stage.index == state.stage and (state.epoch or state.step)
            first_epoch = state.epoch if resuming else 0
            if resuming:
                checkpoint.restore(state.checkpoint)
                self._replay_epoch_end(model, state, global_epoch)
            else:
                state.start_stage(stage.index)
            if self.verbose:
                print(f"\n{stage.describe()} ({self.task.describe_level(stage.level)}), "
                      f"{epochs} epochs x {steps_per_epoch} steps, batch {c.batch_size}, "
                      f"{self.replicas} replica(s)")
            stage_result = self._train_stage(
                stage, model, checkpoint, state, first_epoch, epochs, steps_per_epoch, global_epoch
            )
            global_epoch += epochs - first_epoch
            self._finish_stage(stage, model, state, stage_result)
            kill_point("between_stages")

        summary = self._summary(state, time.time() - run_start)
        self.run_dir.save_model(self.backbone, BACKBONE_FILE)
        self.run_dir.write_summary(summary)
        self.run_dir.finish()
        return summary

    def _finish_stage(self, stage, model, state, result):
        """Records the stage as done, then writes its backbone and head: a kill between the two is repaired
        on --resume by writing the files again from the stage's last checkpoint."""
        state.finish_stage(result)
        self.run_dir.write_state(state)
        self.runtime.sync_weights(model)
        self.run_dir.save_model(self.backbone, stage_backbone_file(stage.index))
        self.run_dir.save_model(model.head, stage_head_file(stage.index))

    def _recovered_result(self, stage, state, steps_per_epoch, knn_accuracy=None):
        """The result of a stage whose process died after its last epoch was saved (the timings of that
        process are lost; loss and accuracy were saved with the epoch)."""
        return {**self._stage_result(stage, steps_per_epoch, state.epoch_logs or {}, knn_accuracy=knn_accuracy),
                "recovered": True}

    def _replay_epoch_end(self, model, state, global_epoch):
        """Runs the epoch-end callbacks of the last finished epoch again when a kill interrupted them (its
        checkpoint holds the weights they saw), so its log row, TensorBoard point and kNN value are not lost.
        Returns the logs as the callbacks left them ({} when nothing was pending)."""
        if not state.epoch_end_pending:
            return {}
        self.runtime.sync_weights(model)
        logs = dict(state.epoch_logs or {})
        callbacks = self._callbacks(model)
        callbacks.on_train_begin()
        callbacks.on_epoch_end(global_epoch - 1, logs)
        callbacks.on_train_end(logs)
        state.epoch_ended()
        self.run_dir.write_state(state)
        return logs

    def _save_progress(self, checkpoint, state, stage, epoch, step, totals, epoch_logs=None):
        """Checkpoint, then record in state.json that `epoch` epochs and `step` more steps of `stage` are done.

        Interrupted in multi-worker training, workers cannot agree on a save, so there only the regular
        checkpoints count.
        """
        if step and not self.runtime.saves_inside_epochs:
            return
        path = checkpoint.save()
        kill_point("checkpoint_written")
        state.record(stage.index, epoch, step, totals, os.path.abspath(path), epoch_logs)
        self.run_dir.write_state(state)
        self._steps_since_save = 0
        kill_point("after_checkpoint")

    def _non_finite_stop(self, stage, epoch, step, loss, state):
        """The message for a non-finite loss, after pointing state.json at the last good checkpoint.

        Nothing is saved after the bad step. A checkpoint holds the weights after its last update, so when the
        very first step run from it is the bad one, its weights made the NaN: state.json goes back to the
        point before it (CheckpointManager keeps two), where one exists in the same stage.
        """
        where = f"{stage.name} (stage {stage.index}) epoch {epoch + 1} step {step + 1}: the loss is {loss}"
        bad = state.checkpoint if self._steps_since_save == 0 else None
        if bad and state.roll_back():
            self.run_dir.write_state(state)
            where += f" (the first step from {bad}, whose weights made it)"
        elif bad:
            where += f" (the first step from {bad}: its weights may be the cause)"
        if state.checkpoint:
            point = f"stage {state.stage}, {state.epoch} epoch(s)" + (f" and {state.step} step(s)" if state.step
                                                                        else "")
            return (f"{where}. The run stopped; the last good checkpoint, {state.checkpoint} ({point} done), is "
                    f"untouched. Lower --lr (or check the data) and continue with --resume.")
        return (f"{where}. The run stopped before its first checkpoint. Lower --lr (or check the data) and start "
                f"again; --checkpoint_every_steps saves points inside an epoch.")

    def _train_stage(self, stage, model, checkpoint, state, first_epoch, epochs, steps_per_epoch, global_epoch):
        step = self.runtime.step_function(model, self.config)
        self._steps_since_save = 0  # finite steps run from the weights of the last checkpoint (or the start)
        callbacks = self._callbacks(model)
        callbacks.on_train_begin()
        stage_start = time.time()
        step_rates = []  # images/s of each step but an epoch's first
        logs, knn_accuracy = {}, None
        for epoch in range(first_epoch, epochs):
            callbacks.on_epoch_begin(global_epoch)
            first_step = state.step if epoch == first_epoch else 0
            totals = dict(state.totals) if first_step and state.totals else {
                "loss": 0.0, "correct": 0.0, "count": 0.0}
            iterator = self._epoch_batches(stage, epoch, skip_steps=first_step)

            def after_step(i, sums, seconds):
                if i and seconds > 0:  # the first step of an epoch includes tracing and pipeline warm-up
                    step_rates.append(sums["count"] / seconds)
                self._steps_since_save += 1
                kill_point("mid_epoch")
                every = self.config.checkpoint_every_steps
                if every and (i + 1) % every == 0 and i + 1 < steps_per_epoch:
                    self._save_progress(checkpoint, state, stage, epoch, i + 1, totals)
                callbacks.on_train_batch_end(i, {k: v / max(sums["count"], 1) for k, v in sums.items()})

            def metrics(totals):
                return [("loss", totals["loss"] / totals["count"]),
                        ("accuracy", totals["correct"] / totals["count"]),
                        ("lr", self.runtime.learning_rate(model))]

            def non_finite(i, loss):
                return self._non_finite_stop(stage, epoch, i, loss, state)

            try:
                loop.run_epoch(step, iterator, steps_per_epoch, totals, first_step, after_step, self.verbose, metrics,
                               non_finite)
            except loop.Interrupted as stop:  # Ctrl-C: the steps done so far are kept
                self._save_progress(checkpoint, state, stage, epoch, stop.steps_done, totals)
                raise
            logs = {
                "stage": stage.index,
                "stage_epoch": epoch + 1,
                "level": stage.level,
                "loss": totals["loss"] / max(totals["count"], 1),
                "accuracy": totals["correct"] / max(totals["count"], 1),
                "lr": self.runtime.learning_rate(model),
            }
            self._save_progress(checkpoint, state, stage, epoch + 1, 0, None, logs)
            callbacks.on_epoch_end(global_epoch, logs)
            if state.epoch_end_pending:  # recorded: a kill from here on needs no replay
                state.epoch_ended()
                self.run_dir.write_state(state)
            global_epoch += 1
            if self.chief and self.config.knn_monitor:
                knn_accuracy = self._knn_monitor().last_accuracy
        callbacks.on_train_end(logs)
        return self._stage_result(stage, steps_per_epoch, logs, time.time() - stage_start,
                                  steady_images_per_sec(step_rates), knn_accuracy)

    def _stage_result(self, stage, steps_per_epoch, logs, wall_time=None, images_per_sec=None, knn_accuracy=None):
        """A finished stage's entry in summary.json."""
        return {
            "stage": stage.index,
            "blocks": list(stage.trained_blocks),
            "last_block": f"B{stage.last_block}",
            "level": stage.level,
            "task_level": self.task.describe_level(stage.level),
            "epochs": self.epochs[stage.index],
            "steps_per_epoch": steps_per_epoch,
            "final_loss": logs.get("loss"),
            "final_accuracy": logs.get("accuracy"),
            "chance_accuracy": self.task.chance_accuracy(stage.level),
            "wall_time_s": wall_time,
            "images_per_sec": images_per_sec,
            "knn_accuracy": knn_accuracy,
            "backbone_file": stage_backbone_file(stage.index),
            "head_file": stage_head_file(stage.index),
        }

    def _summary(self, state, wall_time):
        c = self.config
        return {
            "config": c.to_dict(),
            "task": self.task.get_config(),
            "dataset": {"name": self.source.name, "split": c.split, "num_examples": self.source.num_examples,
                        "unreadable": dict(self.source.unreadable)},
            "backbone": {"file": BACKBONE_FILE, "name": c.backbone, "parameters": int(self.backbone.count_params())},
            "strategy": self.runtime.summary(c),
            "machine": self.runtime.machine(),
            "stages": sorted(state.stages, key=lambda s: s["stage"]),
            "wall_time_s": wall_time,
        }



class JaxTrainer(Trainer):
    """`Trainer` with the JAX runtime whatever `config.backend` says (the run records backend "jax", so a resume
    with TensorFlow is refused as a changed setting). `JaxTrainer(config).train()`."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(dataclasses.replace(config, backend="jax"), *args, **kwargs)

def make_runtime(backend, strategy=None):
    """The runtime of a Keras backend: "tensorflow" (tf.distribute `strategy`, default the current one) or
    "jax" (the process's local devices; no strategy)."""
    if backend == "jax":
        from psl_keras.training.jax_runtime import JaxRuntime  # imports no TensorFlow

        return JaxRuntime(strategy)
    if backend != "tensorflow":
        raise PSLError(f"Unknown backend {backend!r}: tensorflow or jax (--backend).")
    return TensorFlowRuntime(strategy)


class TensorFlowRuntime:
    """What training needs from TensorFlow: a tf.distribute strategy over the devices, tf.data input pipelines
    made per (stage, epoch), the stage's `train_step` in a `tf.function` under `strategy.run`, tf.train
    checkpoints."""

    def __init__(self, strategy=None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.chief = distribute.is_chief(self.strategy)
        self.worker = distribute.worker_id(self.strategy)
        # Interrupted in multi-worker training, workers cannot agree on a save: only regular checkpoints count.
        self.saves_inside_epochs = not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def validate(self, config, task):
        """Refuses settings this runtime cannot train (a PSLError naming the flag)."""

    def scope(self):
        """Where variables are created (replicated by the strategy)."""
        return self.strategy.scope()

    def set_up(self, config):
        if config.deterministic:
            missing = {k: v for k, v in DETERMINISTIC_ENV.items() if os.environ.get(k) != v}
            if missing:
                raise PSLError("--deterministic needs oneDNN off and one CPU thread per pool, which only take "
                               "effect before TensorFlow is imported: set "
                               f"{' '.join(f'{k}={v}' for k, v in DETERMINISTIC_ENV.items())} in the environment "
                               "(train.py does it itself when --deterministic is on its command line).")
            # Process-wide and one-way in TensorFlow: every later op in this process is deterministic too.
            tf.config.experimental.enable_op_determinism()
        if config.mixed_precision:
            # float16 needs a GPU to pay off; bfloat16 is what CPUs (and TPUs) accelerate.
            policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
            keras.mixed_precision.set_dtype_policy(policy)

    def load_source(self, config, verbose=False):
        return data_lib.load_images(config.dataset, config.data_dir or None, config.split, config.on_bad_image,
                                    min_side=config.image_size, verbose=verbose, download=config.download)

    def place_source(self, source, config):
        """The training source where this runtime reads it (tf.data streams it from where it is)."""
        return source

    def start_stage(self, model):
        """Called once a stage's model and optimizer are built."""

    def step_function(self, model, config):
        """batch -> dict of global sums (loss, correct, count) after one optimizer step of the stage."""
        return loop.distributed_step(self.strategy, model.train_step, config.jit_compile)

    def epoch_batches(self, source, task, config, stage, epoch, skip_steps=0):
        preprocess = lambda image, _label, seed: task.preprocess(image, seed, stage.level)  # noqa: E731
        seed = derived_seed(config.seed, DATA_SEED, stage.index, epoch)
        return iter(loop.distributed_dataset(
            self.strategy,
            lambda ctx: data_lib.training_pipeline(
                source, preprocess, config.batch_size, seed, ctx, config.shuffle_buffer, skip_steps,
                batch_transform=task.batch_transform(stage.level),
            ),
        ))

    def learning_rate(self, model):
        return optim.current_learning_rate(model.optimizer)

    def sync_weights(self, model):
        """Makes the Keras variables hold the stage's current weights (before they are saved)."""

    def checkpointer(self, directory, backbone, model):
        """Saves and restores the stage's training state (backbone, head, optimizer, task state)."""
        extra = {"task_state": model.task_state} if model.task_state is not None else {}
        return loop.TFCheckpointer(directory, backbone=backbone, head=model.head,
                              optimizer=model.optimizer, **extra)

    def restore_backbone(self, backbone, path):
        checkpoint = tf.train.Checkpoint(backbone=backbone)
        try:
            checkpoint.restore(path).expect_partial()
        except (tf.errors.NotFoundError, ValueError) as err:
            raise PSLError(
                f"--resume: cannot restore {path} ({err}). The checkpoint is missing or was "
                f"written by another configuration; start a new --output_dir."
            ) from None

    def logging_callbacks(self, run_dir):
        return [RunCSVLogger(run_dir.file(LOG_FILE)),
                keras.callbacks.TensorBoard(run_dir.file(TENSORBOARD_DIR), write_graph=False, update_freq="epoch")]

    def summary(self, config):
        """summary.json's "strategy" entry."""
        return {"name": config.strategy, "replicas": int(self.replicas)}

    def machine(self):
        """Where the run was made (results tables say on which machine and backend each number was made)."""
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        return {"host": platform.node(), "cpu_cores": os.cpu_count(), "accelerators": gpus,
                "backend": "tensorflow", "versions": {"psl_keras": psl_keras.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}}
