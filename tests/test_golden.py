"""Rotation and jigsaw keep training exactly what they trained before the trainer learned contrastive tasks.

`golden_weights.json` holds a fingerprint (SHA-256 of every backbone weight's bytes, plus per-weight sums for
diagnosis) of two tiny runs made with the code of commit 7d78921, before the Task interface grew
`objective` / `batch_transform`. Bit-identical weights after two stages of training mean the same data order,
augmentation, loss scaling, decay and optimizer steps.

Floating-point results depend on the TensorFlow build and the CPU's instruction set; after deliberately
upgrading either, regenerate on the old code with `python tests/test_golden.py --write` (CI runs on one machine).

Issue 11 changed two defaults (rotation's resampling, jigsaw's small-image geometry); the runs here name the
values those runs were made with, which stay reachable as flags for reproducing published numbers.
"""

import hashlib
import json
import os
import sys

import numpy as np

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_weights.json")
RUNS = {
    "rotation": {"task_options": {"resample": "bilinear"}},
    "jigsaw": {"batch_size": 8, "task_options": {"set_sizes": "4,8,16", "geometry": "standard"}},
}


def fingerprints(tmp_path):
    from conftest import synthetic_images, tiny_config
    from psl_keras.data import ImageSource
    from psl_keras.training import Trainer

    source = ImageSource.from_arrays("synthetic", synthetic_images(64), np.arange(64) % 4)
    result = {}
    for task, extra in RUNS.items():
        trainer = Trainer(tiny_config(tmp_path / task, task=task, **extra), source=source, verbose=0)
        trainer.train()
        weights = [np.asarray(w) for w in trainer.backbone.weights]
        digest = hashlib.sha256(b"".join(w.astype(np.float32).tobytes() for w in weights)).hexdigest()
        result[task] = {"sha256": digest, "sums": [float(w.astype(np.float64).sum()) for w in weights]}
    return result


def test_rotation_and_jigsaw_weights_are_bit_identical_to_before(tmp_path):
    with open(GOLDEN) as f:
        golden = json.load(f)
    now = fingerprints(tmp_path)
    for task in RUNS:
        sums, expected = np.array(now[task]["sums"]), np.array(golden[task]["sums"])
        assert sums.shape == expected.shape, f"{task}: the backbone has other weights than before"
        worst = float(np.max(np.abs(sums - expected) / (np.abs(expected) + 1e-6)))
        assert now[task]["sha256"] == golden[task]["sha256"], (
            f"{task} trains other weights than before (largest relative change of a weight's sum: {worst:.2e})")


if __name__ == "__main__" and "--write" in sys.argv:
    import pathlib
    import tempfile

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(GOLDEN, "w") as f:
        json.dump(fingerprints(pathlib.Path(tempfile.mkdtemp())), f, indent=1)
    print(f"wrote {GOLDEN}")
