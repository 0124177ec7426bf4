"""Per-stage optimizers and learning-rate schedules.

Every stage gets a fresh optimizer whose schedule spans that stage's steps (Algorithm 1 trains each stage
from its own start). Weight decay is not an optimizer option here: it is the L2 term the stage model adds to
its loss for kernels only, which is the coupled decay of the paper's Caffe/PyTorch SGD.
"""

import keras
from keras import ops

from psl_keras.config import SCHEDULES
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


def build_optimizer(name, schedule, momentum=0.9, nesterov=False):
    """The optimizer of one stage (`sgd`; tasks that need LARS add it here)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov)
    raise PSLError(f"Unknown optimizer {name!r}. Choose: sgd (--optimizer).")


def current_learning_rate(optimizer):
    """The learning rate the optimizer will use at its next step, as a Python float."""
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
