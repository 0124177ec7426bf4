"""Stage-wise network partition (PSL §3.2, §3.4) and the stage model with its custom train_step.

A stage trains a window of consecutive blocks and its own head g_i on task level G_i. Blocks before the
window run forward only: BatchNorm in inference mode (their statistics stay frozen) and a stop-gradient
at the stage input, so the loss of stage i touches nothing outside S_i and g_i. Blocks after the window
are not run at all.

Modes (the paper's ablations):
  psl    progressive levels G1, G2, G3, gradient restricted to the window (the method)
  sl     the hardest level in every stage, gradient restricted (stage-wise only)
  psl_f  progressive levels, full gradient: stage i trains B1 .. its last block
  e2e    one stage over all blocks with one head on the hardest level (the baseline)
"""

import dataclasses

import keras
from keras import ops

from psl_keras import optim
from psl_keras.backbones import backbone_blocks
from psl_keras.config import MODES
from psl_keras.errors import PSLError
from psl_keras.lazy import tf

DEFAULT_WINDOWS = ((1, 3), (2, 4), (3, 5))
NUM_BLOCKS = 5


@dataclasses.dataclass(frozen=True)
class Stage:
    """One learning stage: which blocks run, which train, at which task level."""

    index: int  # 1-based
    first_trained: int  # 1-based index of the first block that trains; blocks before it are frozen
    last_block: int  # 1-based index of the last block (its output feeds the head)
    level: int  # task level G_level

    @property
    def name(self):
        return f"S{self.index}"

    @property
    def trained_blocks(self):
        return tuple(f"B{i}" for i in range(self.first_trained, self.last_block + 1))

    def describe(self):
        frozen = {1: "", 2: "B1 frozen, "}.get(self.first_trained, f"B1..B{self.first_trained - 1} frozen, ")
        return f"{self.name}: {frozen}trains {'+'.join(self.trained_blocks)} on G{self.level}"


def parse_windows(text):
    """Parses "1-3,2-4,3-5" into ((1, 3), (2, 4), (3, 5)), checking that the windows make sense."""
    try:
        windows = tuple(tuple(int(v) for v in part.split("-")) for part in text.split(","))
        if any(len(w) != 2 for w in windows):
            raise ValueError
    except ValueError:
        raise PSLError(f"--stage_windows={text!r}: expected windows like '1-3,2-4,3-5'.") from None
    check_windows(windows)
    return windows


def check_windows(windows):
    for first, last in windows:
        if not 1 <= first <= last <= NUM_BLOCKS:
            raise PSLError(f"Stage window B{first}..B{last} is not within B1..B{NUM_BLOCKS}.")
    lasts = [last for _, last in windows]
    if lasts != sorted(lasts) or len(set(lasts)) != len(lasts):
        raise PSLError(f"Stage windows {windows} must end at strictly increasing blocks.")


def stage_plan(mode, num_levels, windows=DEFAULT_WINDOWS):
    """The list of stages for a mode; psl/sl/psl_f need one window per task level."""
    if mode not in MODES:
        raise PSLError(f"Unknown mode {mode!r}. Choose one of: {', '.join(MODES)} (--mode).")
    if mode == "e2e":
        return [Stage(1, 1, NUM_BLOCKS, num_levels)]
    check_windows(windows)
    if len(windows) != num_levels:
        raise PSLError(
            f"Mode {mode} pairs each stage with a task level: {len(windows)} windows for "
            f"{num_levels} levels. Give {num_levels} windows in --stage_windows."
        )
    stages = []
    for i, (first, last) in enumerate(windows, start=1):
        level = num_levels if mode == "sl" else i
        # psl_f trains B1 .. the window's last block; the others freeze the blocks before the window.
        stages.append(Stage(i, 1 if mode == "psl_f" else first, last, level))
    return stages


def step_sums(per_example, correct):
    """What a training step reports: the batch's summed loss, correct predictions and example count."""
    return {
        "loss": ops.sum(ops.cast(per_example, "float32")),
        "correct": ops.sum(ops.cast(correct, "float32")),
        "count": ops.cast(ops.shape(per_example)[0], "float32"),
    }


class StageModel(keras.Model):
    """The network of one stage: shared backbone blocks plus head g_i, with a custom train_step.

    The blocks are the backbone's own block sub-models (shared weights, nothing copied). `train_step`
    runs in a replica context (`strategy.run`): it divides the loss by the global batch size (Keras 3's TF
    optimizer sums gradients over replicas), adds L2 weight decay on kernels only (not on biases or
    BatchNorm) divided by the replica count, and returns sums that the trainer all-reduces for logging.
    """

    def __init__(self, blocks, stage, head, task, global_batch_size, weight_decay=0.0, **kwargs):
        super().__init__(name=kwargs.pop("name", f"stage_{stage.index}"), **kwargs)
        self.stage = stage
        self.task = task
        self.forward_blocks = list(blocks[: stage.first_trained - 1])
        self.trained_blocks = list(blocks[stage.first_trained - 1 : stage.last_block])
        self.head = head
        self.global_batch_size = int(global_batch_size)
        self.weight_decay = float(weight_decay)
        # Whatever else the task keeps for the stage (MoCo's key encoder and queue); never trained by the loss.
        self.task_state = task.build_stage_state(self)

    def frozen_features(self, inputs):
        """Runs the blocks before the window forward only: BatchNorm in inference mode, no gradient."""
        x = self.task.backbone_images(inputs)
        for block in self.forward_blocks:
            x = block(x, training=False)
        return ops.stop_gradient(x) if self.forward_blocks else x

    def trained_forward(self, features, training=False):
        """Runs the stage's trained blocks and its head on the window's input features."""
        x = features
        for block in self.trained_blocks:
            x = block(x, training=training)
        return self.head(x, training=training)

    def call(self, inputs, training=False):
        return self.trained_forward(self.frozen_features(inputs), training=training)

    @property
    def stage_variables(self):
        """Exactly the variables stage i may change: its trained blocks and its head."""
        variables = []
        for layer in self.trained_blocks + [self.head]:
            variables.extend(layer.trainable_variables)
        return variables

    def stage_loss(self, features, labels, replicas=1):
        """The loss stage i minimises on a (per-replica) batch, from the window's input features: the task's
        objective summed and divided by the global batch, plus L2 decay on the stage's kernels divided by the
        replica count. Returns (loss, the task's outputs, per-example losses, per-example correct). What the
        TF `train_step` and the JAX step both differentiate."""
        outputs = self.task.stage_outputs(self, features, training=True)
        per_example, correct = self.task.objective(labels, outputs)
        loss = ops.sum(per_example) / self.global_batch_size
        if self.weight_decay:
            loss = loss + optim.l2_penalty(self.stage_variables, self.weight_decay, replicas)
        return loss, outputs, per_example, correct

    def train_step(self, data):
        inputs, labels = data
        variables = self.stage_variables
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        # The frozen prefix runs outside the tape: nothing of it is recorded or kept for the backward pass.
        features = self.frozen_features(inputs)
        with tf.GradientTape() as tape:
            loss, outputs, per_example, correct = self.stage_loss(features, labels, replicas)
            scaled_loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.task.after_step(self, outputs)
        return step_sums(per_example, correct)


def stage_logits(backbone, stage_head, task, inputs):
    """Logits of a stage head on a batch of task inputs: the backbone up to the head's block, then the head.

    The same computation as the stage model in inference mode: the blocks run one after another (they take
    any spatial size, jigsaw tiles included), the head reads the last one.
    """
    x = task.backbone_images(inputs)
    for block in backbone_blocks(backbone)[: int(stage_head.last_block[1:])]:
        x = block(x, training=False)
    return stage_head.head(x, training=False)
