"""The package as users install it: the wheel built from this checkout, installed into a fresh virtualenv
outside it, and its three commands run from another directory (a tiny train, evaluate and demo start)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.request

import numpy as np
from PIL import Image

from conftest import REPO, synthetic_images

TINY_RUN = ["--task", "rotation", "--backbone", "resnet18", "--width", "0.125", "--image_size", "32",
            "--head_hidden", "16", "--batch_size", "16", "--epochs_per_stage", "1", "--steps_per_epoch", "2"]


def _run(command, cwd, timeout=600, env=None):
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_wheel_installs_outside_the_checkout_and_its_commands_train_evaluate_and_serve(tmp_path):
    from psl_keras import __version__
    from psl_keras.data.arrays import save_arrays

    # Built from a copy of what the wheel is made of, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    shutil.copytree(os.path.join(REPO, "psl_keras"), source / "psl_keras",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("psl_keras-*.whl")
    assert f"-{__version__}-" in wheel.name
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    # The dependencies come from this environment's site-packages (a .pth file), so pip resolves them without
    # an index: a dependency the wheel declares but nothing provides fails the install.
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip()
    with open(os.path.join(site, "outer_environment.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-index", "--no-build-isolation", str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    location = _run([python, "-c", "import psl_keras; print(psl_keras.__file__)"], cwd=work).strip()
    assert location.startswith(str(venv)), location  # the installed package, not the checkout
    assert _run([str(bin_dir / "psl-train"), "--version"], cwd=work).strip().startswith(f"psl-keras {__version__}")
    usage = subprocess.run([str(bin_dir / "psl-train"), "--help"], cwd=work, capture_output=True, text=True)
    assert "psl-train --task rotation" in usage.stdout and "--task" in usage.stdout  # absl's --help exits 1

    data = str(work / "data.npz")
    save_arrays(data, synthetic_images(64, 32, seed=1), np.arange(64) % 4, "synthetic", "all", num_classes=4)
    env = {"PYTHONPATH": "", "KERAS_BACKEND": "tensorflow"}
    _run([str(bin_dir / "psl-train"), *TINY_RUN, "--dataset", f"arrays:{data}", "--output_dir", "runs/tiny"],
         cwd=work, env=env)
    assert (work / "runs" / "tiny" / "backbone.keras").exists()
    _run([str(bin_dir / "psl-evaluate"), "--probe", "knn", "--k", "5", "--runs", "tiny=runs/tiny", "--dataset",
          f"arrays:{data}", "--output_dir", "eval"], cwd=work, env=env)
    assert "tiny" in (work / "eval" / "results.md").read_text()

    gallery = work / "gallery"
    for i, image in enumerate(synthetic_images(8, 32, seed=2)):
        (gallery / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(gallery / f"class{i % 2}" / f"{i}.png")
    port = _free_port()
    log = open(work / "demo.log", "w")
    demo = subprocess.Popen([str(bin_dir / "psl-demo"), "--runs_dir", "runs", f"--gallery=folder:{gallery}",
                             f"--port={port}", f"--cache_dir={work / 'cache'}"], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, **env))
    try:
        deadline = time.time() + 240
        while True:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                assert demo.poll() is None and time.time() < deadline, (work / "demo.log").read_text()[-3000:]
                time.sleep(0.5)
        assert "gradio" in page.lower()
        while "Serving on" not in (work / "demo.log").read_text():  # the gallery is read and the run found
            assert demo.poll() is None and time.time() < deadline, (work / "demo.log").read_text()[-3000:]
            time.sleep(0.5)
        assert "1 run(s)" in (work / "demo.log").read_text()
    finally:
        demo.terminate()
        demo.wait(timeout=30)
