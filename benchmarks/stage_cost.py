"""What a PSL stage's training step costs relative to an end-to-end step, measured in one process.

For each backbone setting it times the train_step of S1, S2, S3 (psl mode) and of E2E on one fixed,
already-preprocessed batch (so only the network step is timed, not the input pipeline), and prints
images/s, the measured ratio step_time(stage) / step_time(E2E), and the ratio predicted by FLOPs:
forward-only blocks cost 1x their multiply-adds, trained blocks ~3x (forward + two backward products).

  python benchmarks/stage_cost.py                       # ResNet-50 @224 and CIFAR ResNet-18 @32
  python benchmarks/stage_cost.py --settings cifar --steps 20 --jit_compile --mixed_precision

Absolute numbers depend on the machine; the ratios are what to compare.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from psl_keras import stages  # noqa: E402
from psl_keras.backbones import BLOCK_NAMES, backbone_blocks, build_backbone  # noqa: E402
from psl_keras.flops import macs_per_block, predicted_ratio  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402

SETTINGS = {
    "resnet50": dict(backbone="resnet50", image_size=224, batch=16, width=1.0),
    "resnet50_b32": dict(backbone="resnet50", image_size=224, batch=32, width=1.0),
    "revnet50_b32": dict(backbone="revnet50", image_size=224, batch=32, width=1.0),
    "cifar": dict(backbone="resnet18", image_size=32, batch=256, width=1.0),
    "cifar_small": dict(backbone="resnet18", image_size=32, batch=512, width=0.5),
}


def time_stage(blocks, task, stage, inputs, labels, steps, jit_compile):
    head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name=f"g_{stage.name}")
    model = stages.StageModel(blocks, stage, head, task, len(labels), weight_decay=1e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    model.optimizer.build(model.stage_variables)
    step = tf.function(model.train_step, jit_compile=jit_compile)
    labels = labels % task.num_classes(stage.level)
    for _ in range(2):  # trace and warm up
        float(step((inputs, labels))["loss"])
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        float(step((inputs, labels))["loss"])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_setting(name, steps, jit_compile, mixed_precision):
    s = SETTINGS[name]
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if mixed_precision else "float32")
    keras.utils.set_random_seed(0)
    backbone = build_backbone(s["backbone"], s["image_size"], width=s["width"])
    blocks = backbone_blocks(backbone)
    task = build_task("rotation", s["image_size"])
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.uniform(size=(s["batch"], s["image_size"], s["image_size"], 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 8, s["batch"]), tf.int32)
    macs = macs_per_block(backbone, s["image_size"])
    named = [(stage.name, stage) for stage in stages.stage_plan("psl", 3)]
    named.append(("E2E", stages.stage_plan("e2e", 3)[0]))
    results = {}
    for label, stage in named:
        results[label] = (stage, time_stage(blocks, task, stage, inputs, labels, steps, jit_compile))
    e2e_time = results["E2E"][1]
    flags = ", ".join(f for f, on in (("XLA", jit_compile), ("bfloat16", mixed_precision)) if on) or "float32"
    print(f"\n{s['backbone']} @{s['image_size']}x{s['image_size']}, batch {s['batch']}, width {s['width']}, "
          f"{flags}, median of {steps} steps")
    print("GMACs per block (forward): " + ", ".join(f"{n} {m / 1e9:.3f}" for n, m in zip(BLOCK_NAMES, macs)))
    print(f"{'step':6} {'images/s':>10} {'time/E2E':>9} {'FLOPs say':>9}")
    for label, (stage, seconds) in results.items():
        print(f"{label:6} {s['batch'] / seconds:10.1f} {seconds / e2e_time:9.2f} {predicted_ratio(stage, macs):9.2f}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="resnet50,cifar", help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--jit_compile", action="store_true", help="compile steps with XLA")
    parser.add_argument("--mixed_precision", action="store_true", help="mixed_bfloat16 policy")
    args = parser.parse_args()
    for name in args.settings.split(","):
        run_setting(name.strip(), args.steps, args.jit_compile, args.mixed_precision)


if __name__ == "__main__":
    main()
