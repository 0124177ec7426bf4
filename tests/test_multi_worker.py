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


def test_two_workers_train_one_run(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out_dir = tmp_path / "run"
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(REPO, "train.py"), "--strategy=multi_worker",
             f"--dataset=folder:{images}", "--backbone=resnet18", "--width=0.125", "--head_hidden=16",
             "--batch_size=16", "--epochs_per_stage=1", "--steps_per_epoch=2", f"--output_dir={out_dir}"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-4000:]
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

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out_dir = tmp_path / "run"

    def start(kill_worker_1=False, resume=False):
        workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        procs = []
        for index in range(2):
            env = {k: v for k, v in os.environ.items() if k != "PSL_KERAS_KILL_AT"}
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            if kill_worker_1 and index == 1:
                env["PSL_KERAS_KILL_AT"] = "after_checkpoint:3"
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(REPO, "train.py"), "--strategy=multi_worker",
                 f"--dataset=folder:{images}", "--backbone=resnet18", "--width=0.125", "--head_hidden=16",
                 "--batch_size=16", "--epochs_per_stage=2", "--steps_per_epoch=2", f"--output_dir={out_dir}",
                 *(["--resume"] if resume else [])],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO))
        return procs

    procs = start(kill_worker_1=True)
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

    procs = start(resume=True)
    try:
        errors = [proc.communicate(timeout=300)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, err in zip(procs, errors):
        assert proc.returncode == 0, err[-4000:]
    with open(out_dir / "summary.json") as f:
        summary = json.load(f)
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert all(s["epochs"] == 2 for s in summary["stages"])
