"""How far jigsaw puzzles of real photographs can be solved with no learning, at the 224-px geometry.

The edge-continuity solver (`psl_keras.tasks.shortcuts.jigsaw_edge_probe`) scores each of 16 candidate
permutations by how well facing tile borders continue, on the task's own puzzles (after its per-tile
normalisation). Source: random 256-px crops of the colour photographs scikit-image ships (astronaut, chelsea,
coffee, rocket, motorcycle), at their own resolution (`shortcuts.photograph_crops`).

  pip install scikit-image && python benchmarks/jigsaw_photos.py --crops 150
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from psl_keras.tasks import build_task, shortcuts  # noqa: E402


GEOMETRIES = {
    "paper: 64-px tiles in 75-px cells (--jigsaw_geometry standard)": {"geometry": "standard"},
    "48-px tiles in 75-px cells": {"geometry": "standard", "tile_size": 48},
    "40-px tiles in 75-px cells": {"geometry": "standard", "tile_size": 40},
    "36-px tiles in 75-px cells": {"geometry": "standard", "tile_size": 36},
    "paper + grayscale tiles": {"geometry": "standard", "tile_grayscale": 1.0},
    "paper + colour jitter 0.2": {"geometry": "standard", "tile_color_jitter": 0.2},
    "gapped: 64-px tiles in 128-px cells (the default)": {},
    "gapped + grayscale tiles": {"tile_grayscale": 1.0},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=150)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the crops and of the candidate sets.")
    args = parser.parse_args()
    crops = shortcuts.photograph_crops(args.crops, seed=args.seed)
    print(f"| geometry | solved (of {args.crops}, {args.candidates} candidates) | x chance |\n|---|---|---|")
    for name, options in GEOMETRIES.items():
        task = build_task("jigsaw", 224, options={"set_sizes": "16,32,64", **options})
        start = time.time()
        result = shortcuts.jigsaw_edge_probe(task, crops, level=1, candidates=args.candidates,
                                             seed=args.seed)
        print(f"| {name} | {100 * result['accuracy']:.1f}% | {result['accuracy'] / result['chance']:.1f} "
              f"({time.time() - start:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()
