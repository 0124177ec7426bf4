"""The CIFAR-10 study script end to end at its --tiny budget: every run trains, every evaluation is
cached, the tables come out with mean ± spread over seeds, and a second call redoes nothing."""

import dataclasses
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


# Parses each printed command with its CLI's own flags and builds the config the CLI would run with.
CLI_CONFIGS = r"""
import dataclasses, json, shlex, sys
from absl import flags
script, lines = sys.argv[1], json.load(sys.stdin)
sys.argv = [script]
import importlib
module = importlib.import_module("psl_keras.cli." + script)
configs = []
for line in lines:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(shlex.split(line)[1:])
    if script == "train":
        from psl_keras.config import resolve_config
        configs.append(resolve_config(flags.FLAGS.config, module.explicit_settings()).to_dict())
    else:
        config = dataclasses.asdict(module._config())
        config.update(k=module._neighbours(), runs=flags.FLAGS.runs, probe=flags.FLAGS.probe)
        configs.append(config)
print(json.dumps(configs))
"""


def cli_configs(script, lines):
    result = subprocess.run([sys.executable, "-c", CLI_CONFIGS, script], input=json.dumps(lines),
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_printed_commands_run_the_study_settings(tmp_path, monkeypatch):
    """--print_commands gives train.py / evaluate.py lines that make the same configs the study runs in-process."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments"))
    import study_cifar10
    from psl_keras.config import resolve_config

    result = subprocess.run([sys.executable, SCRIPT, "--print_commands", "--runs_dir", str(tmp_path), "--data_dir",
                             "some/tfds"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    args = study_cifar10.argparse.Namespace(runs_dir=str(tmp_path), data_dir="some/tfds", tiny=False)
    specs = study_cifar10.study_runs()

    train_lines = [line for line in lines if line.startswith("python train.py ")]
    expected = [resolve_config("cifar10_small", study_cifar10.train_settings(s, args)).to_dict() for s in specs]
    assert cli_configs("train", train_lines) == expected
    assert {c["mode"] for c in expected} == {"psl", "e2e", "sl", "psl_f"}  # e2e_equal is e2e with e2e_epochs

    knn, linear, linear_long = cli_configs("evaluate", [l for l in lines if l.startswith("python evaluate.py ")])
    names = [s.name for s in specs] + ["random_init"]
    for config, epochs, probe in ((knn, 10, "knn"), (linear, 10, "all-blocks"), (linear_long, 20, "all-blocks")):
        settings = dataclasses.asdict(study_cifar10.eval_settings(args, epochs))
        assert {k: v for k, v in config.items() if k in settings and k not in ("k", "resume_dir")} == \
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items() if k not in ("k", "resume_dir")}
        assert config["probe"] == probe
    assert knn["k"] == [200, 20]
    assert [r.split("=")[0] for r in knn["runs"].split(",")] == names == [r.split("=")[0] for r in
                                                                           linear["runs"].split(",")]
    assert knn["runs"].endswith(f"random_init={tmp_path}/random_init.keras")
    assert [r.split("=")[0] for r in linear_long["runs"].split(",")] == ["rotation_psl_s0", "rotation_e2e_s0"]
    assert linear["resume_dir"] and linear_long["resume_dir"] != linear["resume_dir"]


def test_gpu_budget_settings_are_the_study_settings_on_jax(tmp_path, monkeypatch):
    """--gpu_epochs E: the same rotation runs at 3xE / 3E epochs through Keras on JAX from an array file, named
    apart from the CPU study's runs so both live in one runs_dir."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments"))
    import study_cifar10

    args = study_cifar10.argparse.Namespace(runs_dir=str(tmp_path), data_dir="some/tfds", tiny=False,
                                            dataset="arrays:train.npz")
    specs = study_cifar10.gpu_runs(30)
    assert [s.name for s in specs[:4]] == ["rotation_psl_s0_gpu30", "rotation_e2e_s0_gpu30", "rotation_sl_s0_gpu30",
                                           "rotation_psl_f_s0_gpu30"]
    rotation = [s for s in specs if s.task == "rotation"]
    assert sorted((s.mode, s.seed) for s in rotation) == sorted(
        [("psl", 0), ("psl", 1), ("psl", 2), ("e2e", 0), ("e2e", 1), ("e2e", 2), ("sl", 0), ("psl_f", 0)])
    # SimCLR and jigsaw: psl and e2e of seed 0 at their share of the budget (two views, nine tiles an example).
    assert [s.name for s in specs if s.task != "rotation"] == [
        "simclr_psl_s0_gpu3", "simclr_e2e_s0_gpu3", "jigsaw_psl_s0_gpu6", "jigsaw_e2e_s0_gpu6"]
    assert not {s.name for s in specs} & {s.name for s in study_cifar10.study_runs()}
    from psl_keras.config import resolve_config

    for spec in specs:
        cpu = resolve_config("cifar10_small", study_cifar10.train_settings(
            study_cifar10.RunSpec(spec.task, spec.mode, spec.seed), args))
        gpu = resolve_config("cifar10_small", study_cifar10.train_settings(spec, args))
        assert (gpu.backend, gpu.dataset, gpu.epochs_per_stage, gpu.knn_monitor) == (
            "jax", "arrays:train.npz", spec.gpu_epochs, False)
        if spec.mode == "e2e":
            assert gpu.e2e_epochs in (0, 3 * spec.gpu_epochs)  # 0: e2e runs the stages' sum
        # Everything else is the CPU study's run: the mode, the seed, the task's geometry, the optimiser; the
        # training data is the array file, so jigsaw's CPU subset (split) goes.
        differ = {k for k, v in gpu.to_dict().items() if cpu.to_dict()[k] != v}
        assert differ <= {"backend", "dataset", "epochs_per_stage", "knn_monitor", "checkpoint_every_steps",
                          "output_dir", "split"}, differ
        assert gpu.split == "train"


@needs_cifar10
def test_gpu_budget_trains_without_tensorflow_and_reports_beside_the_cpu_tables(tmp_path):
    """The GPU machine has JAX and no TensorFlow: the study's --gpu_epochs train step runs there (here with
    TensorFlow made unimportable), and the tables of those runs go to results_gpuE.md, not over results.md."""
    import numpy as np

    from psl_keras.data.arrays import save_arrays

    data = tmp_path / "train.npz"
    rng = np.random.default_rng(0)
    save_arrays(data, rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), np.arange(64) % 10, "synthetic",
                "train", num_classes=10)
    runs = tmp_path / "runs"
    base = ["--tiny", "--gpu_epochs", "1", "--runs_dir", str(runs), "--verbose", "0"]
    helper = os.path.join(REPO, "tests", "helpers", "without_tensorflow.py")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}  # the script picks JAX itself
    result = subprocess.run([sys.executable, helper, "experiments/study_cifar10.py", *base, "--step", "train",
                             "--only", "rotation_psl_s0_gpu1,rotation_e2e_s0_gpu1,simclr_psl_s0_gpu1,jigsaw_e2e_s0_gpu1",
                             "--dataset", f"arrays:{data}"],
                            capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    for name, epochs in (("rotation_psl_s0_gpu1", [1, 1, 1]), ("rotation_e2e_s0_gpu1", [3]),
                         ("simclr_psl_s0_gpu1", [1, 1, 1]), ("jigsaw_e2e_s0_gpu1", [3])):
        summary = json.load(open(runs / name / "summary.json"))
        assert summary["config"]["backend"] == "jax" and summary["machine"]["backend"] == "jax"
        assert [s["epochs"] for s in summary["stages"]] == epochs
        assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
    # Training and evaluating GPU runs in one call would need JAX and TensorFlow in one process: refused.
    refused = subprocess.run([sys.executable, SCRIPT, *base, "--step", "train,evaluate"], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 2 and "--step train" in refused.stderr
    study(runs, "--gpu_epochs", "1", "--step", "report")
    tables = open(runs / "results_gpu1.md").read()
    assert "## rotation, GPU budget 3x1" in tables and "jax, " in tables
    assert "## simclr, GPU budget 3x1" in tables and "## jigsaw, GPU budget 3x1" in tables
    assert [line.split(" |")[0] for line in tables.splitlines() if line.startswith("| psl") or
            line.startswith("| e2e")] == ["| psl (1+1+1 ep)", "| e2e (3 ep)"] * 2  # rotation; simclr psl, jigsaw e2e
    assert not (runs / "results.md").exists()
