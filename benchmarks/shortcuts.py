"""Shortcut probes of the pretext tasks as they are configured (`psl_keras/tasks/shortcuts.py`), at both geometries.

  python benchmarks/shortcuts.py --data_dir ../shared/tfds [--images 150] [--task_options rotation:resample=...]

Rotation: separability (max(AUC, 1 - AUC); 0.5 = none) of angle families and the worst pair of angles by the
axis/diagonal second-difference statistic, on isotropic noise (white noise low-passed by a 1-pixel Gaussian, no
orientation at all), i.i.d. noise and CIFAR-10 test images. Jigsaw: accuracy of the edge-continuity solver on
16-way and 500-way puzzles (chance 1/16, 1/500). At 224 px the inputs are 256-px noise and CIFAR-10 images
upscaled to 256 (CIFAR has no ImageNet-size content; real photos would be the better test there).
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from psl_keras.tasks import shortcuts  # noqa: E402
from psl_keras.tasks import build_task  # noqa: E402


def cifar_images(data_dir, count, size):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    data = tfds.load("cifar10", split=f"test[:{count}]", data_dir=data_dir, download=False)
    images = np.stack([example["image"] for example in tfds.as_numpy(data)])
    if size != 32:
        images = tf.cast(tf.image.resize(images, [size, size], method="bicubic", antialias=True), tf.float32)
        images = np.clip(images.numpy(), 0, 255).astype(np.uint8)
    return images


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--sizes", default="32,224")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        source = 32 if size <= 64 else 256
        inputs = {"isotropic noise": shortcuts.noise_images(args.images, source, smooth=1.0),
                  "i.i.d. noise": shortcuts.noise_images(args.images, source)}
        if args.data_dir:
            inputs["CIFAR-10 test"] = cifar_images(args.data_dir, args.images, source)
        rotation = build_task("rotation", size)
        jigsaw = build_task("jigsaw", size)
        for name, images in inputs.items():
            probe = shortcuts.rotation_probe(rotation, images)
            rows.append((size, "rotation", name, f"families {probe['family']:.2f}, worst pair {probe['worst_pair']:.2f}",
                         "0.50"))
            print(rows[-1], flush=True)
            for candidates in (16, 500):
                solved = shortcuts.jigsaw_edge_probe(jigsaw, images, level=1, candidates=candidates)
                rows.append((size, "jigsaw", name, f"{candidates}-way {100 * solved['accuracy']:.1f}%",
                             f"{100 * solved['chance']:.1f}%"))
                print(rows[-1], flush=True)
    print("\n| size | task | images | probe | chance |\n|---|---|---|---|---|")
    for size, task, name, value, chance in rows:
        print(f"| {size} px | {task} | {name} | {value} | {chance} |")


if __name__ == "__main__":
    main()
