"""Runs stage 2 of a tiny PSL rotation model for a few steps under one Keras backend, from saved weights.

  KERAS_BACKEND=tensorflow python tests/helpers/stage_step.py DIR --init   # writes DIR/{backbone,head}.keras, batch
  KERAS_BACKEND=jax python tests/helpers/stage_step.py DIR --record=0,1,3  # DIR/jax_{0,1,3}.npz: after 0, 1, 3 steps
  KERAS_BACKEND=tensorflow python tests/helpers/stage_step.py DIR          # DIR/tensorflow_3.npz

Both backends start from the same .keras files and the same batches, so their losses and weights can be
compared (tests/test_jax.py).
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from psl_keras import optim, stages  # noqa: E402
from psl_keras.backbones import backbone_blocks, build_backbone  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402

STEPS = 3


def main(directory, init, record=(STEPS,)):
    task = build_task("rotation", 32, head_hidden=16)
    stage = stages.stage_plan("psl", 3)[1]  # S2: B1 frozen, B2..B4 trained, B5 never runs
    if init:
        keras.utils.set_random_seed(0)
        backbone = build_backbone("resnet18", 32, width=0.125)
        head = task.build_head(stage.level, backbone_blocks(backbone)[stage.last_block - 1].output.shape[-1], "g2")
        backbone.save(os.path.join(directory, "backbone.keras"))
        head.save(os.path.join(directory, "head.keras"))
        rng = np.random.default_rng(0)
        np.savez(os.path.join(directory, "batches.npz"),
                 inputs=rng.uniform(0, 1, (STEPS, 16, 32, 32, 3)).astype("float32"),
                 labels=rng.integers(0, task.num_classes(stage.level), (STEPS, 16)))
        return
    backbone = keras.saving.load_model(os.path.join(directory, "backbone.keras"), safe_mode=True, compile=False)
    head = keras.saving.load_model(os.path.join(directory, "head.keras"), safe_mode=True, compile=False)
    model = stages.StageModel(backbone_blocks(backbone), stage, head, task, global_batch_size=16, weight_decay=5e-4)
    optimizer = optim.build_optimizer("sgd", 0.1, momentum=0.9, nesterov=True)
    batches = np.load(os.path.join(directory, "batches.npz"))
    backend = keras.backend.backend()

    def dump(count, losses):
        weights = {f"backbone/{w.path}": np.asarray(w) for w in backbone.weights}
        weights.update({f"head/{w.path}": np.asarray(w) for w in head.weights})
        suffix = f"_{devices}dev" if devices > 1 else ""
        np.savez(os.path.join(directory, f"{backend}_{count}{suffix}.npz"), losses=np.array(losses), **weights)

    losses = []
    devices = int(os.environ.get("STAGE_STEP_DEVICES", "1"))
    if backend == "jax":
        from psl_keras.training.jax_step import JaxStageStep, data_parallel

        step = JaxStageStep(model, optimizer)
        state = step.initial_state()
    else:
        model.compile(optimizer=optimizer)
        model.optimizer.build(model.stage_variables)
    for count in range(max(record) + 1):
        if count in record:
            if backend == "jax":
                step.write_back(state)
                state = step.initial_state()  # write_back consumed nothing, but the jit donates its input
            dump(count, losses)
        if count == max(record):
            break
        inputs, labels = batches["inputs"][count], batches["labels"][count]
        if backend == "jax":
            if devices > 1:
                import jax

                assert len(jax.devices()) == devices, jax.devices()
                state, inputs, labels = data_parallel(state, inputs, labels)
            state, sums = step.step(state, inputs, labels)
        else:
            sums = model.train_step((inputs, labels))
        losses.append(float(sums["loss"]))


if __name__ == "__main__":
    record = [int(v) for a in sys.argv if a.startswith("--record=") for v in a.split("=")[1].split(",")]
    main(sys.argv[1], "--init" in sys.argv, record or [STEPS])
