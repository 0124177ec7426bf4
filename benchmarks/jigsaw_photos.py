"""How far jigsaw puzzles of real photographs can be solved with no learning, at the 224-px geometry.

The edge-continuity solver (`psl_keras.tasks.shortcuts.jigsaw_edge_probe`) scores each of 16 candidate
permutations by how well facing tile borders continue, on the task's own puzzles (after its per-tile
normalisation). Source: random 256-px crops of the colour photographs scikit-image ships (astronaut, chelsea,
coffee, rocket, motorcycle), at their own resolution.

  pip install scikit-image && python benchmarks/jigsaw_photos.py --crops 150
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from psl_keras.tasks import build_task, shortcuts  # noqa: E402


def photographs():
    import skimage.data as data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.stereo_motorcycle()[0]]


def random_crops(count, side=256, seed=0):
    rng = np.random.default_rng(seed)
    photos = photographs()
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(photo.shape[0] - side + 1)
        x = rng.integers(photo.shape[1] - side + 1)
        crops.append(photo[y:y + side, x:x + side])
    return np.stack(crops)


GEOMETRIES = {
    "paper (64-px tiles in 75-px cells)": {"geometry": "standard"},
    "48-px tiles": {"geometry": "standard", "tile_size": 48},
    "40-px tiles": {"geometry": "standard", "tile_size": 40},
    "paper + grayscale tiles (p=1)": {"geometry": "standard", "tile_grayscale": 1.0},
    "paper + colour jitter 0.2": {"geometry": "standard", "tile_color_jitter": 0.2},
    "48-px tiles + colour jitter 0.2": {"geometry": "standard", "tile_size": 48, "tile_color_jitter": 0.2},
    "40-px tiles + grayscale + jitter 0.2": {"geometry": "standard", "tile_size": 40, "tile_grayscale": 1.0,
                                             "tile_color_jitter": 0.2},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=150)
    parser.add_argument("--candidates", type=int, default=16)
    args = parser.parse_args()
    crops = random_crops(args.crops)
    print(f"| geometry | solved (of {args.crops}, {args.candidates} candidates) | x chance |\n|---|---|---|")
    for name, options in GEOMETRIES.items():
        task = build_task("jigsaw", 224, options={"set_sizes": "16,32,64", **options})
        start = time.time()
        result = shortcuts.jigsaw_edge_probe(task, crops, level=1, candidates=args.candidates)
        print(f"| {name} | {100 * result['accuracy']:.1f}% | {result['accuracy'] / result['chance']:.1f} "
              f"({time.time() - start:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
