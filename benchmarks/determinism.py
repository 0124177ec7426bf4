"""Where runs stop repeating, and what --deterministic costs.

Trains a few steps per stage at the cifar10_small scale (ResNet-18 width 0.5, batch 512) in
fresh processes and compares the stage-1 backbones (B1-B3 trained) bit for bit:

  psl vs psl        the same run twice: run-to-run non-determinism
  psl vs psl_f      the same computation under two modes
  ... for each variant (the default; TF's op determinism with oneDNN off; --deterministic, which also gives each
  CPU thread pool one thread), with the step throughput of each.

  python benchmarks/determinism.py [--steps 6] [--batch_size 512] [--width 0.5] [--data_dir ../shared/tfds]

Without --data_dir the images are random uint8 noise (the kernels' order of summation is what matters).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from psl_keras.config import DETERMINISTIC_ENV  # noqa: E402


def trial(args):
    """One training process: writes the backbone's weights (npz) and the step throughput (json)."""
    import numpy as np

    from psl_keras.config import TrainConfig
    from psl_keras.data import ImageSource, load_images
    from psl_keras.training.trainer import Trainer

    if args.data_dir:
        source = load_images("cifar10", args.data_dir, "train")
    else:
        rng = np.random.default_rng(0)
        count = args.batch_size * args.steps
        source = ImageSource.from_arrays("noise", rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                                         np.zeros(count, np.int64))
    config = TrainConfig(task="rotation", mode=args.trial, backbone="resnet18", width=args.width, image_size=32,
                         batch_size=args.batch_size, lr=0.2, epochs_per_stage=1,
                         steps_per_epoch=args.steps, deterministic=args.deterministic,
                         output_dir=os.path.join(args.out, "run"))
    if args.op_determinism_only:  # what --deterministic did first: TF's op determinism alone
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    summary = Trainer(config, source=source, verbose=0).train()
    import keras

    backbone = keras.saving.load_model(os.path.join(args.out, "run", "stage1_backbone.keras"), compile=False)
    np.savez(os.path.join(args.out, "weights.npz"), *[np.asarray(w) for w in backbone.weights])
    with open(os.path.join(args.out, "trial.json"), "w") as f:
        json.dump({"images_per_sec": summary["stages"][0]["images_per_sec"],
                   "names": [w.path for w in backbone.weights]}, f)


VARIANTS = {  # name: (environment, TrainConfig.deterministic)
    "default": ({}, False),
    "onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, False),
    "op_determinism_onednn_off": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "op"),  # not enough: still differs
    "deterministic": (DETERMINISTIC_ENV, True),  # what --deterministic does: + one thread per pool
}


def run_trial(mode, variant, args):
    env_extra, deterministic = VARIANTS[variant]
    op_only = deterministic == "op"
    out = tempfile.mkdtemp(prefix=f"det_{mode}_{variant}_")
    command = [sys.executable, os.path.abspath(__file__), "--trial", mode, "--out", out, "--steps", str(args.steps),
               "--batch_size", str(args.batch_size), "--width", str(args.width)]
    if deterministic:
        command.append("--op_determinism_only" if op_only else "--deterministic")
    if args.data_dir:
        command += ["--data_dir", args.data_dir]
    env = {k: v for k, v in os.environ.items() if k not in DETERMINISTIC_ENV}
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, env={**env, **env_extra})
    import numpy as np

    with open(os.path.join(out, "trial.json")) as f:
        info = json.load(f)
    weights = np.load(os.path.join(out, "weights.npz"))
    return info, [weights[f"arr_{i}"] for i in range(len(weights.files))]


def compare(a, b, names):
    import numpy as np

    diffs = [float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b)]
    worst = int(np.argmax(diffs))
    return {"identical": all(d == 0 for d in diffs), "max_abs_diff": diffs[worst], "where": names[worst],
            "weights_differing": sum(d > 0 for d in diffs), "weights": len(diffs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--variants", default="default,op_determinism_onednn_off,deterministic",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--trial", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--op_determinism_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        return trial(args)
    rows = []
    for variant in args.variants.split(","):
        first, w1 = run_trial("psl", variant, args)
        second, w2 = run_trial("psl", variant, args)
        other, w3 = run_trial("psl_f", variant, args)
        speed = [t["images_per_sec"] for t in (first, second, other)]
        rows.append({"variant": variant, "psl_vs_psl": compare(w1, w2, first["names"]),
                     "psl_vs_psl_f": compare(w1, w3, first["names"]), "images_per_sec": speed})
    print(f"stage 1 (B1-B3), {args.steps} steps, batch {args.batch_size}, ResNet-18 width {args.width}, "
          f"{'CIFAR-10' if args.data_dir else 'noise images'}")
    print("| variant | psl vs psl | psl vs psl_f | images/s (3 runs) |")
    print("|---|---|---|---|")
    for row in rows:
        cells = []
        for key in ("psl_vs_psl", "psl_vs_psl_f"):
            c = row[key]
            cells.append("bit-identical" if c["identical"] else
                         f"max abs diff {c['max_abs_diff']:.2e} ({c['weights_differing']}/{c['weights']} weights; "
                         f"worst {c['where']})")
        print(f"| {row['variant']} | {cells[0]} | {cells[1]} | "
              f"{', '.join(f'{s:.0f}' for s in row['images_per_sec'])} |")
    base = sum(rows[0]["images_per_sec"]) / 3
    for row in rows[1:]:
        speed = sum(row["images_per_sec"]) / 3
        print(f"{row['variant']}: {speed / base:.2f}x the speed of {rows[0]['variant']} ({speed:.0f} vs {base:.0f} "
              f"images/s)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
