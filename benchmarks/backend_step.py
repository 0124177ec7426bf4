"""TF vs JAX: the time of one stage training step, S1/S2/S3 and E2E, same model, same batch.

Runs itself once per backend in a fresh process (Keras picks its backend at import), then prints images/s per
stage and the JAX/TF ratio. Each process times `--steps` steps after `--warmup` compiled ones.

  python benchmarks/backend_step.py                                 # CIFAR ResNet-18 width 0.5, batch 128
  python benchmarks/backend_step.py --backbone resnet50 --image_size 224 --batch_size 16 --width 1

The TF step is `StageModel.train_step` in a `tf.function` (as the trainer runs it, one replica); the JAX step is
`psl_keras.training.jax_step.JaxStageStep` under `jax.jit`. Absolute numbers depend on the machine; compare the ratios.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def measure(args):
    import keras
    import numpy as np

    from psl_keras import optim, stages
    from psl_keras.backbones import backbone_blocks, build_backbone
    from psl_keras.tasks import build_task

    keras.utils.set_random_seed(0)
    task = build_task("rotation", args.image_size, head_hidden=256)
    backbone = build_backbone(args.backbone, args.image_size, width=args.width)
    blocks = backbone_blocks(backbone)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32")
    results = {}
    plans = [("S1", stages.stage_plan("psl", 3)[0]), ("S2", stages.stage_plan("psl", 3)[1]),
             ("S3", stages.stage_plan("psl", 3)[2]), ("E2E", stages.stage_plan("e2e", 3)[0])]
    for name, stage in plans:
        labels = rng.integers(0, task.num_classes(stage.level), args.batch_size)
        head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], f"g_{name}")
        model = stages.StageModel(blocks, stage, head, task, args.batch_size, weight_decay=5e-4)
        optimizer = optim.build_optimizer("sgd", 0.01, momentum=0.9, nesterov=True)
        if keras.backend.backend() == "jax":
            from psl_keras.training.jax_step import JaxStageStep

            runner = JaxStageStep(model, optimizer)
            state = [runner.initial_state()]

            def run_step():
                state[0], sums = runner.step(state[0], inputs, labels)
                return sums["loss"]

            def block(value):
                value.block_until_ready()
        else:
            import tensorflow as tf

            model.compile(optimizer=optimizer)
            model.optimizer.build(model.stage_variables)
            step = tf.function(model.train_step, jit_compile=False)
            data = (tf.constant(inputs), tf.constant(labels))

            def run_step():
                return step(data)["loss"]

            def block(value):
                value.numpy()
        for _ in range(args.warmup):
            block(run_step())
        start = time.perf_counter()
        for _ in range(args.steps):
            value = run_step()
        block(value)
        results[name] = args.batch_size * args.steps / (time.perf_counter() - start)
    print(json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args)
    speeds = {}
    for backend in ("tensorflow", "jax"):
        command = [sys.executable, os.path.abspath(__file__), "--measure", *sys.argv[1:]]
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO,
                             env=dict(os.environ, KERAS_BACKEND=backend)).stdout
        speeds[backend] = json.loads(out.strip().splitlines()[-1])
    print(f"{args.backbone} x{args.width} at {args.image_size} px, batch {args.batch_size}, {args.steps} timed steps")
    print("| stage | TF images/s | JAX images/s | JAX / TF |")
    print("|---|---|---|---|")
    for name in speeds["tensorflow"]:
        tf_speed, jax_speed = speeds["tensorflow"][name], speeds["jax"][name]
        print(f"| {name} | {tf_speed:.0f} | {jax_speed:.0f} | {jax_speed / tf_speed:.2f} |")


if __name__ == "__main__":
    main()
