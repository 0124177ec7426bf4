"""What training costs in multiply-adds: per block, per stage step, and the E2E budget a PSL run's compute buys.

Counted from the convolution and dense layers (BatchNorm, activations and the heads are small next to them). A
training step costs a frozen block's forward pass once and a trained block's about three times (forward, then
the gradients of its inputs and of its weights), the usual accounting for convolutional networks.
"""

import keras

from psl_keras.backbones import backbone_blocks


def block_macs(block):
    """Multiply-adds of one forward pass of a block sub-model (one example), from its convolution and dense
    layers; the sub-model must have fixed input shapes (see `macs_per_block`)."""
    total = 0
    for layer in block.layers:
        if hasattr(layer, "forward_macs"):  # a layer of its own sub-layers (RevNet's reversible units)
            total += layer.forward_macs(tuple(layer.input.shape[1:]))
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * kh * kw * layer.input.shape[-1] * c_out // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def macs_per_block(backbone, image_size):
    """Forward multiply-adds of B1..B5 for one `image_size` input (blocks rebuilt with fixed shapes)."""
    macs, shape = [], (image_size, image_size, 3)
    for block in backbone_blocks(backbone):
        fixed = keras.models.clone_model(block, input_tensors=keras.Input(shape))
        macs.append(block_macs(fixed))
        shape = tuple(fixed.output.shape[1:])
    return macs


def stage_step_macs(stage, macs):
    """Multiply-adds of one example's training step in `stage` (a `stages.Stage`): frozen blocks forward only,
    trained blocks x3, blocks after the window not run."""
    frozen = sum(macs[: stage.first_trained - 1])
    trained = sum(macs[stage.first_trained - 1: stage.last_block])
    return frozen + 3 * trained


def predicted_ratio(stage, macs):
    """A stage step's cost over an E2E step's (all five blocks trained)."""
    return stage_step_macs(stage, macs) / (3 * sum(macs))


def equal_compute_e2e_epochs(plan, epochs, macs):
    """E2E epochs costing what the stages of `plan` cost at `epochs` (a dict stage index -> epochs), in
    multiply-adds: sum over stages of epochs x (stage step / E2E step). A float; round it to train."""
    return sum(epochs[stage.index] * predicted_ratio(stage, macs) for stage in plan)
