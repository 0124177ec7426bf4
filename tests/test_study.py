"""The CIFAR-10 study script (issue 14) end to end at its --tiny budget: every run trains, every evaluation is
cached, the tables come out with mean ± spread over seeds, and a second call redoes nothing."""

import json
import os
import subprocess
import sys

from conftest import REPO, SHARED_TFDS, needs_cifar10

SCRIPT = os.path.join(REPO, "experiments", "study_cifar10.py")


def study(runs_dir, *extra):
    result = subprocess.run([sys.executable, SCRIPT, "--tiny", "--runs_dir", str(runs_dir), "--data_dir", SHARED_TFDS,
                             "--verbose", "0", *extra], capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@needs_cifar10
def test_tiny_study_trains_evaluates_and_reports_every_run(tmp_path):
    out = study(tmp_path)
    names = [line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("=== ") and "training" in line]
    assert names == ["rotation_psl_s0", "rotation_e2e_s0", "rotation_psl_s1", "rotation_e2e_s1",
                     "rotation_e2e_equal_s0", "rotation_sl_s0", "rotation_psl_f_s0", "simclr_psl_s0", "simclr_e2e_s0",
                     "jigsaw_psl_s0", "jigsaw_e2e_s0"]
    for name in names + ["random_init"]:
        evaluation = json.load(open(tmp_path / "eval" / f"{name}.json"))
        assert set(evaluation["knn"]["result"]) == {"200", "20"}
        assert all(0.0 <= v <= 1.0 for v in evaluation["linear"]["result"].values())
    long = json.load(open(tmp_path / "eval" / "rotation_psl_s0.json"))
    assert long["linear_long"]["epochs"] > long["linear"]["epochs"]  # the ranking check at a longer budget
    # The equal-compute E2E run gets psl's multiply-adds in whole epochs: 1 epoch per stage -> 2 E2E epochs.
    equal = json.load(open(tmp_path / "rotation_e2e_equal_s0" / "summary.json"))
    assert equal["config"]["e2e_epochs"] == 2 and equal["stages"][0]["epochs"] == 2
    tables = open(tmp_path / "results.md").read()
    for task in ("rotation", "simclr", "jigsaw"):
        assert f"## {task}" in tables
    psl_row = next(line for line in tables.splitlines() if line.startswith("| psl (") and "| 2 |" in line)
    assert psl_row.count("±") >= 5  # two seeds: every linear column as mean ± spread
    assert "random init" in tables
    # Everything is done: a second call trains and evaluates nothing, and writes the same tables.
    again = study(tmp_path)
    assert "=== " not in again
    assert open(tmp_path / "results.md").read() == tables
