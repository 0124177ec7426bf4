"""Per-stage optimizers and learning-rate schedules.

Every stage gets a fresh optimizer whose schedule spans that stage's steps (Algorithm 1 trains each stage
from its own start). Weight decay is not an optimizer option here: it is the L2 term the stage model adds to
its loss for kernels only, which is the coupled decay of the paper's Caffe/PyTorch SGD.
"""

import keras
from keras import ops

from psl_keras.config import OPTIMIZERS, SCHEDULES
from psl_keras.errors import PSLError


def decayed(variables):
    """The variables weight decay applies to: kernels (rank >= 2), never biases or BatchNorm vectors."""
    return [v for v in variables if len(v.shape) > 1]


def l2_penalty(variables, weight_decay, replicas=1):
    """Coupled L2 decay, 0.5 * wd * |w|^2 over the kernels among `variables`, divided by the replica count
    because each replica adds it to its loss and the optimizer sums the replicas' gradients."""
    squares = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in decayed(variables)]
    return 0.5 * weight_decay * ops.sum(squares) / replicas


def parse_pattern(text):
    """"20,20,10,10" -> (20, 20, 10, 10): epochs of each constant-lr segment in the paper's units."""
    try:
        pattern = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        pattern = ()
    if not pattern or any(v <= 0 for v in pattern):
        raise PSLError(f"--schedule_pattern={text!r}: expected positive numbers like '20,20,10,10'.")
    return pattern


def step_boundaries(total_steps, pattern):
    """Steps at which a step schedule drops, the pattern scaled to `total_steps`."""
    total = sum(pattern)
    boundaries, elapsed = [], 0.0
    for segment in pattern[:-1]:
        elapsed += segment
        boundaries.append(max(1, int(round(total_steps * elapsed / total))))
    return boundaries


def learning_rate_schedule(kind, base_lr, total_steps, pattern=(20, 20, 10, 10), drop=0.1, warmup_steps=0):
    """A Keras schedule: `step` drops by `drop` on `pattern`, `cosine` decays to 0, or `constant`."""
    if kind == "constant":
        return float(base_lr)
    if kind == "step":
        boundaries = step_boundaries(total_steps, pattern)
        values = [base_lr * drop**k for k in range(len(pattern))]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if kind == "cosine":
        warmup_steps = min(int(warmup_steps), max(total_steps - 1, 0))
        if warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, max(total_steps - warmup_steps, 1), warmup_target=base_lr, warmup_steps=warmup_steps
            )
        return keras.optimizers.schedules.CosineDecay(base_lr, max(total_steps, 1))
    raise PSLError(f"Unknown schedule {kind!r}. Choose one of: {', '.join(SCHEDULES)} (--schedule).")


@keras.saving.register_keras_serializable(package="psl_keras")
class LARS(keras.optimizers.Optimizer):
    """LARS (You et al. 2017) as SimCLR trains with it: momentum SGD whose step for each kernel is scaled by
    the trust ratio `eeta * |w| / |g|` (1 where either norm is 0). Biases and BatchNorm vectors (rank 1) get
    plain momentum SGD: no adaptation, as in SimCLR's `exclude_from_layer_adaptation`.

    Weight decay is not applied here: the stage model's loss already holds the L2 term on kernels only, so
    `g` arrives as grad + wd * w, which is what SimCLR's LARS adds before taking the norm.
    Update: v <- momentum * v + lr * ratio * g;  w <- w - v.
    """

    def __init__(self, learning_rate=0.3, momentum=0.9, eeta=0.001, name="lars", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = float(momentum)
        self.eeta = float(eeta)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if len(variable.shape) > 1:
            weight_norm = ops.sqrt(ops.sum(ops.square(variable)))
            gradient_norm = ops.sqrt(ops.sum(ops.square(gradient)))
            ratio = ops.where(
                ops.logical_and(weight_norm > 0, gradient_norm > 0),
                self.eeta * weight_norm / ops.maximum(gradient_norm, 1e-30),
                ops.ones_like(weight_norm),
            )
            learning_rate = learning_rate * ratio
        velocity = self.velocities[self._get_variable_index(variable)]
        self.assign(velocity, ops.add(ops.multiply(velocity, self.momentum), ops.multiply(gradient, learning_rate)))
        self.assign_sub(variable, velocity)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "eeta": self.eeta}


def build_optimizer(name, schedule, momentum=0.9, nesterov=False):
    """The optimizer of one stage: `sgd` (the paper's pretext tasks) or `lars` (SimCLR's)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov)
    if name == "lars":
        return LARS(learning_rate=schedule, momentum=momentum)
    raise PSLError(f"Unknown optimizer {name!r}. Choose one of: {', '.join(OPTIMIZERS)} (--optimizer).")


def current_learning_rate(optimizer):
    """The learning rate the optimizer will use at its next step, as a Python float."""
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
