"""A real train.py process killed with SIGKILL at any moment loses nothing.

One run is killed seven times, each time at another point (psl_keras.faults.POINTS: inside an epoch, between a
checkpoint's files and state.json, half-way through writing state.json, inside the kNN monitor, half-way
through a .keras export, between two stages, right after a checkpoint) and resumed with --resume after each
kill. After every kill what the run directory holds must load; at the end every stage is trained once and the
backbone is bit-identical to the one of an unbroken run with the same flags.
"""

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO, synthetic_images
from psl_keras.config import DETERMINISTIC_ENV

KILLS = [("mid_epoch", 2), ("checkpoint_written", 2), ("json_write", 1), ("knn_monitor", 1), ("keras_write", 1),
         ("between_stages", 1), ("after_checkpoint", 2)]


def image_folder(root):
    """train/ and test/ splits of 4 classes of 32x32 PNGs."""
    for split, count, seed in (("train", 64, 0), ("test", 32, 1)):
        for i, image in enumerate(synthetic_images(count, seed=seed)):
            directory = root / split / f"class{i % 4}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(directory / f"{i:03d}.png")
    return root


def train(output_dir, folder, kill_at=None, resume=False):
    env = {k: v for k, v in os.environ.items() if k not in ("PSL_KERAS_KILL_AT", *DETERMINISTIC_ENV)}
    if kill_at:
        env["PSL_KERAS_KILL_AT"] = f"{kill_at[0]}:{kill_at[1]}"
    flags = ["--task=rotation", f"--dataset=folder:{folder}", "--backbone=resnet18", "--width=0.125",
             "--image_size=32", "--head_hidden=16", "--batch_size=16", "--epochs_per_stage=2", "--steps_per_epoch=3",
             "--checkpoint_every_steps=1", "--knn_bank_size=0", "--deterministic", f"--output_dir={output_dir}"]
    if kill_at and kill_at[0] == "knn_monitor":  # the monitor changes no weights and may differ on --resume
        flags.append("--knn_monitor")
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *flags, *(["--resume"] if resume else [])],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)


def backbone_weights(path):
    import keras

    model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return [np.asarray(w) for w in model.weights]


def test_sigkill_at_seven_points_then_resume_ends_as_an_unbroken_run(tmp_path):
    import keras

    folder = image_folder(tmp_path / "images")
    unbroken = train(tmp_path / "unbroken", folder)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    run = tmp_path / "killed"
    progress = []
    for i, kill_at in enumerate(KILLS):
        result = train(run, folder, kill_at, resume=i > 0)
        assert result.returncode == -signal.SIGKILL, f"not killed at {kill_at}: {result.stderr[-2000:]}"
        with open(run / "state.json") as f:  # never half-written
            state = json.load(f)
        assert os.path.exists(state["checkpoint"] + ".index"), kill_at
        for name in os.listdir(run):  # every export present loads
            if name.endswith(".keras"):
                keras.saving.load_model(run / name, compile=False, safe_mode=True)
        progress.append((state["stage"], state["epoch"], state["step"], len(state["stages"])))
    assert progress == sorted(progress), f"a resume went backwards: {progress}"
    assert progress[-1][0] == 3 and progress[0] < progress[-1]

    final = train(run, folder, resume=True)
    assert final.returncode == 0, final.stderr[-3000:]
    with open(run / "summary.json") as f:
        summary = json.load(f)
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    # One log row per epoch, in order: a kill inside the epoch-end callbacks (the kNN monitor) must neither lose
    # that epoch's row nor, replayed on --resume, write it twice.
    with open(run / "log.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    assert not [name for name in os.listdir(run) if name.startswith(".tmp_")]
    for a, b in zip(backbone_weights(run / "backbone.keras"),
                    backbone_weights(tmp_path / "unbroken" / "backbone.keras")):
        assert np.array_equal(a, b)
    for stage in (1, 2, 3):
        for a, b in zip(backbone_weights(run / f"stage{stage}_backbone.keras"),
                        backbone_weights(tmp_path / "unbroken" / f"stage{stage}_backbone.keras")):
            assert np.array_equal(a, b)


def test_deterministic_without_onednn_off_is_one_clear_error(tmp_path, monkeypatch):
    # In Python (not train.py) the switch cannot turn oneDNN off any more once TensorFlow is loaded: say how.
    import pytest

    from conftest import tiny_config
    from psl_keras.errors import PSLError
    from psl_keras.training.trainer import Trainer

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    with pytest.raises(PSLError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        Trainer(tiny_config(tmp_path, deterministic=True), verbose=0).train()


def test_sigterm_saves_the_steps_done_like_ctrl_c(tmp_path):
    """kill / timeout / a scheduler's preemption send SIGTERM: it must take Ctrl-C's path (steps saved, exit 130)."""
    import time

    folder = image_folder(tmp_path / "images")
    run = tmp_path / "run"
    flags = ["--task=rotation", f"--dataset=folder:{folder}", "--backbone=resnet18", "--width=0.125",
             "--image_size=32", "--head_hidden=16", "--batch_size=16", "--epochs_per_stage=100000",
             "--steps_per_epoch=3", "--knn_bank_size=0", f"--output_dir={run}"]  # a run that cannot end by itself
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "train.py"), *flags], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Waits for a state, not a time: the first epoch saved, so the run is inside its loop with steps done.
    deadline = time.time() + 600
    saved = None
    while saved is None and time.time() < deadline and process.poll() is None:
        try:
            saved = json.loads((run / "state.json").read_text())
            saved = saved if saved.get("epoch", 0) >= 1 else None
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    assert saved is not None, process.communicate(timeout=60)[1][-2000:]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-2000:]
    assert "Interrupted. Continue with the same flags plus --resume" in stderr
    state = json.loads((run / "state.json").read_text())  # written on the way out, at the step reached
    assert state["stage"] == 1 and (state["epoch"], state["step"]) >= (saved["epoch"], saved["step"]), state
