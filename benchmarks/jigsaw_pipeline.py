"""Jigsaw costs outside the network: permutation-set generation and input-pipeline throughput.

  python benchmarks/jigsaw_pipeline.py --data_dir ../shared/tfds

Prints the seconds to generate the 2000-permutation set (no cache), the Hamming statistics of C1..C3, and
the tf.data pipeline's images/s (decoded image -> nine normalised tiles, batched) for CIFAR-10 at the
CIFAR preset's geometry and for ImageNet-size images (synthetic 375x500; 64x64 tiles in the paper's 75-px
cells and in the default 128-px ones).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from psl_keras import data  # noqa: E402
from psl_keras.tasks import build_task, jigsaw  # noqa: E402


def pipeline_throughput(source, task, batch_size, batches, level=3):
    pipeline = data.training_pipeline(
        source, lambda image, label, seed: task.preprocess(image, seed, level), batch_size, seed=0
    )
    iterator = iter(pipeline)
    next(iterator)  # warm-up: tracing and the first fills
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="TFDS data dir holding cifar10")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args()

    start = time.perf_counter()
    c3 = jigsaw.maximal_hamming_permutations(2000)  # generated, not read from the cache
    seconds = time.perf_counter() - start
    print(f"permutation set of 2000 (maximal Hamming, vectorised): {seconds:.1f} s")
    for name, size in (("C1", 500), ("C2", 1000), ("C3", 2000)):
        minimum, mean = jigsaw.hamming_stats(c3[:size])
        print(f"  {name} |{size}|: min pairwise Hamming {minimum}, mean {mean:.3f}")

    cifar = data.load_images("cifar10", args.data_dir, "train")
    task = build_task("jigsaw", 32)
    rate = pipeline_throughput(cifar, task, args.batch_size, args.batches)
    print(f"CIFAR-10 32px -> {task.resize_shorter} -> {task.crop_size} crop, {task.tile_size}px tiles: "
          f"{rate:.0f} images/s")

    rng = np.random.default_rng(0)
    large = data.ImageSource.from_arrays("synthetic-375x500", rng.integers(0, 256, (768, 375, 500, 3), np.uint8))
    for geometry in ("standard", "gapped"):  # the paper's cells, and the default: the same tiles in larger cells
        task = build_task("jigsaw", 224, options={"geometry": geometry})
        rate = pipeline_throughput(large, task, min(args.batch_size, 64), args.batches // 2)
        print(f"375x500 -> {task.resize_shorter} -> {task.crop_size} crop, {task.tile_size}px tiles in "
              f"{task.cell_size}px cells ({geometry}): {rate:.0f} images/s")


if __name__ == "__main__":
    main()
