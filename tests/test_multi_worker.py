"""Two train.py worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import REPO


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _image_folder(root, count=64):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _start_workers(images, out_dir, epochs_per_stage, resume=False, kill_worker_1_at=None):
    """Two train.py workers on fresh 127.0.0.1 ports; worker 1 may SIGKILL itself (psl_keras.faults)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if k != "PSL_KERAS_KILL_AT"}
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        if kill_worker_1_at and index == 1:
            env["PSL_KERAS_KILL_AT"] = kill_worker_1_at
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train.py"), "--strategy=multi_worker",
             f"--dataset=folder:{images}", "--backbone=resnet18", "--width=0.125", "--head_hidden=16",
             "--batch_size=16", f"--epochs_per_stage={epochs_per_stage}", "--steps_per_epoch=2",
             f"--output_dir={out_dir}", *(["--resume"] if resume else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO))
    return procs


def _finish(procs):
    try:
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-4000:]


def test_two_workers_train_one_run(tmp_path):
    out_dir = tmp_path / "run"
    _finish(_start_workers(_image_folder(tmp_path / "images"), out_dir, epochs_per_stage=1))
    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["strategy"] == {"name": "multi_worker", "replicas": 2}
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert (out_dir / "backbone.keras").exists()
    assert not (out_dir / ".workers").exists()  # the non-chief's checkpoint copies are cleaned up


def test_a_worker_killed_mid_run_then_both_resumed_finish_the_run(tmp_path):
    # Worker 1 is SIGKILLed right after its 3rd checkpoint (stage 2, epoch 1); the chief then waits on a
    # collective that never completes and is killed too, as a cluster manager would. Both restart with --resume.
    import signal
    import time

    images, out_dir = _image_folder(tmp_path / "images"), tmp_path / "run"
    procs = _start_workers(images, out_dir, epochs_per_stage=2, kill_worker_1_at="after_checkpoint:3")
    try:
        assert procs[1].wait(timeout=300) == -signal.SIGKILL
        time.sleep(2)
        assert procs[0].poll() is None  # the chief cannot go on alone
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=60)
    finally:
        for proc in procs:
            proc.kill()
    with open(out_dir / "state.json") as f:
        state = json.load(f)
    assert (state["stage"], state["epoch"]) in ((2, 1), (2, 0))  # the chief's last record, before or at the kill

    _finish(_start_workers(images, out_dir, epochs_per_stage=2, resume=True))
    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert all(s["epochs"] == 2 for s in summary["stages"])
