"""End-to-end runs of train.py as a user would type them (subprocesses, real CIFAR-10 from ../shared/tfds)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_TFDS, needs_cifar10


def _run(script, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _train(*args, timeout=600):
    return _run("train.py", *args, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_cifar_run(tmp_path_factory):
    """A tiny PSL rotation run on CIFAR-10 under a 2-replica MirroredStrategy (two logical CPUs)."""
    out_dir = tmp_path_factory.mktemp("cli") / "run"
    result = _train("--task=rotation", "--strategy=mirrored", "--cpu_replicas=2", f"--data_dir={SHARED_TFDS}",
                    "--backbone=resnet18", "--width=0.125", "--batch_size=32", "--epochs_per_stage=1",
                    "--steps_per_epoch=3", f"--output_dir={out_dir}")
    assert result.returncode == 0, result.stderr[-4000:]
    return out_dir


@needs_cifar10
def test_mirrored_smoke_run_on_cifar10(tiny_cifar_run):
    out_dir = tiny_cifar_run
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
    result = _train(f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'run'}", "--nodownload")
    assert result.returncode == 2
    assert "error: Dataset 'cifar10' is not prepared in --data_dir=" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_values_are_clear_errors(tmp_path):
    result = _train("--mode=greedy", f"--output_dir={tmp_path}")
    assert result.returncode != 0 and "--mode" in result.stderr and "Traceback" not in result.stderr
    result = _train("--stage_windows=1-3,2-9", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'r'}",
                    "--nodownload")
    assert result.returncode == 2 and "within B1..B5" in result.stderr


@needs_cifar10
def test_evaluate_all_blocks_and_knn_side_by_side(tiny_cifar_run, tmp_path):
    runs = f"first={tiny_cifar_run},second={tiny_cifar_run}"
    # Probes under a 2-replica MirroredStrategy too; the 1,000 test images (a TFDS slice) end in a partial batch.
    result = _run("evaluate.py", "--probe=all-blocks", f"--runs={runs}", f"--data_dir={SHARED_TFDS}",
                  "--eval_split=test[:1000]",
                  "--strategy=mirrored", "--cpu_replicas=2", "--epochs=1", "--steps_per_epoch=3",
                  "--batch_size=64", f"--output_dir={tmp_path / 'lin'}")
    assert result.returncode == 0, result.stderr[-4000:]
    with open(tmp_path / "lin" / "results.json") as f:
        rows = json.load(f)["tables"]["linear"]["rows"]
    assert [r["run"] for r in rows] == ["first", "second"]
    with open(tmp_path / "lin" / "linear.csv") as f:
        csv_rows = list(csv.DictReader(f))
    for row, csv_row in zip(rows, csv_rows):  # the CSV, the JSON and the table say the same
        for b in ("B1", "B2", "B3", "B4", "B5"):
            assert float(csv_row[b]) == pytest.approx(row[b]) and 0.0 <= row[b] <= 1.0
            assert f"{100 * row[b]:.1f}" in result.stdout
    assert (tmp_path / "lin" / "linear.png").exists() and (tmp_path / "lin" / "linear.csv").exists()
    assert "| first |" in result.stdout and "| second |" in result.stdout

    # A damaged second run: one clear error, and the first run's finished rows are already on disk.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "backbone.keras").write_bytes(b"not a keras file")
    result = _run("evaluate.py", "--probe=knn", f"--runs=tiny={tiny_cifar_run},broken={tmp_path / 'broken'}",
                  f"--data_dir={SHARED_TFDS}", "--knn_train_examples=2000", "--k=20,200", "--eval_split=test[:1000]",
                  f"--output_dir={tmp_path / 'knn'}")
    assert result.returncode == 2 and "broken" in result.stderr and "Traceback" not in result.stderr
    with open(tmp_path / "knn" / "results.json") as f:
        tables = json.load(f)["tables"]
    assert sorted(tables) == ["knn_k20", "knn_k200"]  # two neighbour counts, one feature extraction
    # The same numbers computed here: bank = the first 2,000 training images, queries = the first 1,000 tests.
    import keras

    from psl_keras import data
    from psl_keras.evaluation import knn as knn_lib

    backbone = keras.saving.load_model(str(tiny_cifar_run / "backbone.keras"), safe_mode=True)
    blocks = ["B1", "B2", "B3", "B4", "B5"]
    bank, bank_labels = knn_lib.extract_features(backbone, data.load_images("cifar10", SHARED_TFDS, "train[:2000]"), 32,
                                                 blocks, limit=2000)
    queries, query_labels = knn_lib.extract_features(backbone, data.load_images("cifar10", SHARED_TFDS, "test[:1000]"),
                                                     32, blocks)
    for k in (20, 200):
        (row,) = tables[f"knn_k{k}"]["rows"]
        assert row["run"] == "tiny"
        for b in blocks:
            expected = knn_lib.knn_accuracy(bank[b], bank_labels, queries[b], query_labels, 10, k, 0.07)
            assert row[b] == pytest.approx(expected, abs=2e-3), (k, b)  # up to 2 of 1,000 ties may flip
    with open(tmp_path / "knn" / "results.md") as f:
        markdown = f.read()
    assert "k=20," in markdown and "k=200," in markdown
    # More neighbours than the bank holds: refused by name, not computed with fewer under the asked k's label.
    result = _run("evaluate.py", "--probe=knn", f"--runs={tiny_cifar_run}", f"--data_dir={SHARED_TFDS}",
                  "--train_split=train[:500]", "--k=999999", "--eval_split=test[:100]",
                  f"--output_dir={tmp_path / 'knn_big_k'}")
    assert result.returncode == 2 and "--k=999999 is more neighbours than the kNN bank holds (500 examples" \
        in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "knn_big_k" / "results.json").exists()


def test_evaluate_bad_inputs_are_clear_errors(tmp_path):
    result = _run("evaluate.py", f"--runs={tmp_path}", f"--data_dir={tmp_path}", "--nodownload")
    assert result.returncode == 2 and "not a finished psl-keras run" in result.stderr
    assert "Traceback" not in result.stderr
    result = _run("evaluate.py", "--probe=knn", f"--runs={tmp_path}", "--k=20,x")  # refused when flags are parsed
    assert result.returncode != 0 and "flag --k=20,x: " in result.stderr and "Traceback" not in result.stderr
    result = _run("evaluate.py", f"--runs={tmp_path}", "--lr=-1")
    assert result.returncode != 0 and "flag --lr=-1: must be a number > 0" in result.stderr
    assert "Traceback" not in result.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "backbone.keras").write_bytes(b"x")
    result = _run("evaluate.py", f"--runs={tmp_path / 'r'}", "--dataset=no_such_images", f"--data_dir={tmp_path}")
    assert result.returncode == 2 and "Unknown TFDS dataset 'no_such_images'" in result.stderr


def test_train_flags_are_generated_from_every_config_field():
    import dataclasses

    from psl_keras.cli import train
    from psl_keras.config import TrainConfig

    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name == "task_options":
            continue
        flag = train.FLAGS[field.name]
        assert flag.default == getattr(defaults, field.name) and field.metadata["help"] in flag.help, field.name
        if field.metadata["choices"]:
            assert list(flag.parser.enum_values) == list(field.metadata["choices"])
    assert train.FLAGS["jigsaw_set_sizes"].default == "500,1000,2000"  # task options keep their generated flags
