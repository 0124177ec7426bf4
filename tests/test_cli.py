"""End-to-end runs of train.py as a user would type them (subprocesses, real CIFAR-10 from ../shared/tfds)."""

import json
import os
import subprocess
import sys

from conftest import REPO, SHARED_TFDS, needs_cifar10


def _train(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@needs_cifar10
def test_mirrored_smoke_run_on_cifar10(tmp_path):
    out_dir = tmp_path / "run"
    result = _train("--task=rotation", "--strategy=mirrored", "--cpu_replicas=2", f"--data_dir={SHARED_TFDS}",
                    "--backbone=resnet18", "--width=0.125", "--batch_size=32", "--epochs_per_stage=1",
                    "--steps_per_epoch=3", f"--output_dir={out_dir}")
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert summary["strategy"] == {"name": "mirrored", "replicas": 2}
    assert summary["dataset"]["num_examples"] == 50000
    assert all(s["steps_per_epoch"] == 3 for s in summary["stages"])
    for name in ("backbone.keras", "stage3_backbone.keras", "state.json", "log.csv"):
        assert (out_dir / name).exists(), name
    assert any(f.endswith(".index") for f in os.listdir(out_dir / "checkpoints"))
    # A finished run is not overwritten by accident; --resume on it has nothing left to do.
    again = _train(f"--data_dir={SHARED_TFDS}", f"--output_dir={out_dir}", "--backbone=resnet18",
                   "--width=0.125", "--batch_size=32", "--epochs_per_stage=1", "--steps_per_epoch=3")
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_missing_dataset_is_one_clear_message(tmp_path):
    result = _train(f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "error: Dataset 'cifar10' is not prepared in --data_dir=" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_values_are_clear_errors(tmp_path):
    result = _train("--mode=greedy", f"--output_dir={tmp_path}")
    assert result.returncode != 0 and "--mode" in result.stderr and "Traceback" not in result.stderr
    result = _train("--stage_windows=1-3,2-9", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "within B1..B5" in result.stderr
