"""RevNet's recomputing backward pass against ordinary backprop, under the backend Keras runs on.

  KERAS_BACKEND=jax JAX_ENABLE_X64=1 python tests/helpers/revnet_checks.py gradients 64 [psl3 e2e1]  # JSON errors
  KERAS_BACKEND=jax python tests/helpers/revnet_checks.py memory 2,8      # JSON: compiled step's temporary bytes

tests/test_revnet.py calls these functions under TensorFlow in-process and runs this file under JAX.
"""

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from psl_keras import stages  # noqa: E402
from psl_keras.backbones import backbone_blocks, build_backbone  # noqa: E402
from psl_keras.backbones.revnet import ReversibleSequence  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402


def set_recompute(model, recompute):
    for block in backbone_blocks(model):
        for layer in block.layers:
            if isinstance(layer, ReversibleSequence):
                layer.recompute = recompute


def stage_gradients(model, backbone, inputs, labels):
    """(gradients of every stage variable, every backbone variable's value after the step's BatchNorm updates,
    whether any frozen-block weight got a gradient) for one training step's loss, without applying it."""
    before = [np.asarray(v.value) for v in backbone.variables]
    if keras.backend.backend() == "jax":
        import jax

        from psl_keras.training.jax_step import JaxStageStep

        step = JaxStageStep(model, keras.optimizers.SGD(0.1))
        trained, others, _ = step.initial_state()
        (_, (others, *_)), grads = jax.jit(jax.value_and_grad(step._loss, has_aux=True))(
            trained, others, inputs, labels)
        for variable, value in zip(step.others, others):
            variable.assign(value)
        frozen_gradient = False  # the JAX step differentiates the stage's variables only, by construction
    else:
        import tensorflow as tf

        frozen = [w for block in model.forward_blocks for w in block.trainable_weights]
        with tf.GradientTape() as tape:  # the frozen prefix inside the tape: its stop-gradient is what guards it
            loss = model.stage_loss(model.frozen_features(tf.constant(inputs)), tf.constant(labels))[0]
        grads = tape.gradient(loss, model.stage_variables + frozen)
        frozen_gradient = any(g is not None for g in grads[len(model.stage_variables):])
        grads = grads[: len(model.stage_variables)]
    after = [np.asarray(v.value) for v in backbone.variables]
    for variable, value in zip(backbone.variables, before):
        variable.assign(value)
    return [np.asarray(g) for g in grads], after, frozen_gradient


def stage_model(image_size, mode, index, width, dtype):
    """(backbone, stage model) of a RevNet-50 rotation stage with every variable in `dtype`, seeded."""
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(0)
        backbone = build_backbone("revnet50", image_size, width=width)
        task = build_task("rotation", image_size, head_hidden=16)
        stage = stages.stage_plan(mode, 3)[index - 1]
        blocks = backbone_blocks(backbone)
        head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name="g")
    finally:
        keras.config.set_dtype_policy("float32")
    return backbone, stages.StageModel(blocks, stage, head, task, global_batch_size=4, weight_decay=5e-4)


def gradient_errors(image_size, batch=4, width=0.125, stage_names=("psl3", "e2e1"), dtypes=("float32", "float64")):
    """Per stage (psl3: S3, B1 and B2 frozen; e2e1: every weight), the recomputing backward pass against the
    ordinary one, in float64 (`exact`: the algorithm) and in float32 (`float32`), beside the float32 gradient's
    own error (`rounding`: float32 against float64). Each error is the largest difference over variables,
    relative to the variable's largest gradient, or to a thousandth of the model's for variables whose gradient
    is zero but for rounding (a convolution's bias before BatchNorm). Also: the largest difference of the
    BatchNorm statistics after the step, whether the step moved them, and whether a frozen block got a gradient."""
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (batch, image_size, image_size, 3))
    results = {}
    for name in stage_names:
        mode, index = name[:-1], int(name[-1])
        models = {dtype: stage_model(image_size, mode, index, width, dtype) for dtype in ("float32", "float64")}
        (backbone, model), (backbone64, model64) = models["float32"], models["float64"]
        model.global_batch_size = model64.global_batch_size = batch
        for source, target in zip(model.variables, model64.variables):  # the same weights in both
            target.assign(np.asarray(source.value, "float64"))
        labels = rng.integers(0, model.task.num_classes(model.stage.level), batch).astype("int32")
        runs = {}
        for dtype, (net, stage) in (("float32", (backbone, model)), ("float64", (backbone64, model64))):
            if dtype not in dtypes:
                continue
            for recompute in (False, True):
                set_recompute(net, recompute)
                runs[dtype, recompute] = stage_gradients(stage, net, inputs.astype(dtype), labels)
        reference = runs[dtypes[-1], False][0]
        assert len(reference) == len(model.stage_variables) and all(np.abs(g).max() > 0 for g in reference), \
            "every stage variable should get a gradient"
        scale = max(np.abs(g).max() for g in reference)

        def error(grads, base):
            return max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-3 * scale)) for a, b in zip(base, grads))

        low = dtypes[0]
        statistics = [a - b for a, b in zip(runs[low, False][1], runs[low, True][1])]
        results[name] = {
            "variables": len(reference),
            "exact": error(runs[dtypes[-1], True][0], reference),
            "statistics_error": max(float(np.abs(d).max()) for d in statistics),
            "statistics_moved": any(not np.array_equal(a, np.asarray(v.value)) for a, v in
                                    zip(runs[low, True][1], models[low][0].variables)),
            "frozen_gradient": any(runs[key][2] for key in runs),
        }
        if "float32" in dtypes:
            # The same step on the batch in another order: equal in exact arithmetic, so its difference is what
            # float32 rounding alone makes of this model's gradient.
            set_recompute(backbone, False)
            order = np.roll(np.arange(batch), 1)
            reordered = stage_gradients(model, backbone, inputs[order].astype("float32"), labels[order])[0]
            results[name].update(float32=error(runs["float32", True][0], runs["float32", False][0]),
                                 rounding=error(runs["float32", False][0], reference),
                                 reordered=error(reordered, runs["float32", False][0]))
    return results


def temporary_bytes(depth, recompute, side=32, channels=64, batch=8):
    """Temporary memory of the compiled backward pass of `depth` reversible units (XLA's memory analysis of
    the jitted gradient; JAX only)."""
    import jax

    keras.utils.set_random_seed(0)
    sequence = ReversibleSequence(channels, channels // 4, depth, recompute=recompute)
    x = np.zeros((batch, side, side, channels), "float32")
    sequence.build(x.shape)
    fixed = [v.value for v in sequence.non_trainable_weights]

    def loss(trained, x):
        y, _ = sequence.stateless_call(trained, fixed, x, training=True)
        return keras.ops.sum(y * y)

    compiled = jax.jit(jax.grad(loss)).lower([v.value for v in sequence.trainable_weights], x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


if __name__ == "__main__":
    what, argument = sys.argv[1], sys.argv[2]
    if what == "gradients":
        dtypes = tuple(os.environ.get("REVNET_DTYPES", "float32,float64").split(","))
        batch = int(os.environ.get("REVNET_BATCH", "4"))
        print(json.dumps(gradient_errors(int(argument), batch=batch, stage_names=sys.argv[3:] or ("psl3", "e2e1"),
                                         dtypes=dtypes)))
    else:
        depths = [int(d) for d in argument.split(",")]
        print(json.dumps({f"{d},{r}": temporary_bytes(d, r) for d in depths for r in (False, True)}))
