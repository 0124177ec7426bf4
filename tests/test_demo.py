"""The Gradio demo end to end: the app runs as users start it (a subprocess on a free localhost port) over tiny
runs trained here, and is driven through its API (gradio_client) and in a real headless Chromium (Playwright)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, synthetic_images, tiny_config
from image_files import bad_files, odd_images

CLASSES = ("circles", "stripes")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_gallery(root):
    """Two classes of 32x32 images (a folder gallery, so the test needs no dataset)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:32, :32]
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(12):
            phase = rng.uniform(0, 6)
            pattern = np.sin(np.hypot(y - 16, x - 16) / 2 + phase) if c == 0 else np.sin(x / 2 + phase)
            image = np.clip(128 + 90 * pattern[..., None] + rng.normal(0, 10, (32, 32, 3)), 0, 255)
            Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")


def _train_runs(runs):
    from psl_keras.data import ImageSource
    from psl_keras.training.trainer import Trainer

    source = ImageSource.from_arrays("synthetic", synthetic_images(64), np.arange(64) % 4)
    Trainer(tiny_config(runs, output_dir=str(runs / "rotation_psl")), source=source, verbose=0).train()
    Trainer(tiny_config(runs, output_dir=str(runs / "jigsaw_psl"), task="jigsaw", batch_size=8,
                        task_options={"set_sizes": "4,8,16"}), source=source, verbose=0).train()
    # A run from before runs kept their heads, and a run whose backbone file is damaged.
    shutil.copytree(runs / "rotation_psl", runs / "old" / "rotation_no_heads")
    summary_path = runs / "old" / "rotation_no_heads" / "summary.json"
    summary = json.loads(summary_path.read_text())
    for stage in summary["stages"]:
        stage.pop("head_file")
        os.remove(runs / "old" / "rotation_no_heads" / f"stage{stage['stage']}_head.keras")
    summary_path.write_text(json.dumps(summary))
    shutil.copytree(runs / "rotation_psl", runs / "broken")
    (runs / "broken" / "stage1_head.keras").write_bytes(b"")
    shutil.copytree(runs / "rotation_psl", runs / "damaged")
    (runs / "damaged" / "backbone.keras").write_bytes(b"not a keras file")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    saved_cache = os.environ.get("PSL_KERAS_CACHE")
    os.environ["PSL_KERAS_CACHE"] = str(root / "permutations")  # the app process inherits it
    _write_gallery(root / "gallery")
    _train_runs(root / "runs")
    port = _free_port()
    log = open(root / "demo.log", "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "apps", "demo.py"), f"--runs_dir={root / 'runs'}",
         f"--gallery=folder:{root / 'gallery'}", f"--port={port}", f"--cache_dir={root / 'cache'}",
         "--max_upload_mb=2"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("the demo did not start:\n" + (root / "demo.log").read_text()[-3000:])
            time.sleep(1)
    from gradio_client import Client

    yield {"url": url, "root": root, "client": Client(url, verbose=False), "process": process}
    process.terminate()
    process.wait(timeout=30)
    log.close()
    if saved_cache is None:
        os.environ.pop("PSL_KERAS_CACHE", None)
    else:
        os.environ["PSL_KERAS_CACHE"] = saved_cache


def _confidences(label_output):
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def test_rotation_endpoint_shows_each_stage_on_its_own_level(demo):
    result = demo["client"].predict("rotation_psl", None, 3, 2, "90", 0, api_name="/rotation")
    view, status = result[0], result[1]
    assert Image.open(view).size[0] >= 160 and "turned **90°**" in status and "#3 (circles)" in status
    # Per stage: title, probabilities, picture, verdict.
    stages = [result[2 + 4 * i: 6 + 4 * i] for i in range(3)]
    angles = [{"0°", "180°"}, {"0°", "90°", "180°", "270°"}, {f"{45 * k}°" for k in range(8)}]
    for (title, probabilities, picture, verdict), expected in zip(stages, angles):
        confidences = _confidences(probabilities)
        assert set(confidences) == expected and sum(confidences.values()) == pytest.approx(1.0, abs=1e-6)
        assert probabilities["label"] == max(confidences, key=confidences.get)
        assert Image.open(picture).size[0] >= 160
    assert "Not in its level" in stages[0][3]  # 90° is not an angle of R1
    for title, probabilities, _, verdict in stages[1:]:
        right = probabilities["label"] == "90°"
        assert verdict.startswith("**Right:**" if right else "**Wrong:**"), verdict


def test_jigsaw_endpoint_names_permutations_of_each_stages_set(demo):
    from psl_keras.tasks import build_task

    task = build_task("jigsaw", 32, options={"set_sizes": "4,8,16"})
    result = demo["client"].predict("jigsaw_psl", None, 5, 2, 6, 1, api_name="/jigsaw")
    applied = "".join(str(v) for v in task.level_permutations(2)[6])
    assert f"#6 {applied}" in result[1]
    for i, size in enumerate((4, 8, 16)):
        title, top5, picture, verdict = result[2 + 4 * i: 6 + 4 * i]
        names = list(_confidences(top5))
        assert len(names) == min(5, size)
        for name in names:  # "#index permutation", each a member of that stage's own set
            index, permutation = name[1:].split(" ")
            assert int(index) < size and "".join(map(str, task.level_permutations(3)[int(index)])) == permutation
        if i == 0:
            assert "Not in its set" in verdict  # permutation #6 is not in C1 (4 permutations)
        else:
            assert verdict.startswith("**Right:**" if top5["label"] == f"#6 {applied}" else "**Wrong:**")


def test_retrieval_two_runs_side_by_side_with_cached_gallery_embeddings(demo):
    client, cache = demo["client"], demo["root"] / "cache"
    result = client.predict("rotation_psl", "jigsaw_psl", None, 13, "B4", 5, api_name="/retrieve")
    assert "gallery image #13 (stripes)" in result[1]
    for title, gallery, vote in (result[2:5], result[5:8]):
        assert len(gallery) == 5
        similarities = [float(item["caption"].split(" · ")[1]) for item in gallery]
        assert similarities == sorted(similarities, reverse=True)
        assert similarities[0] == pytest.approx(1.0, abs=1e-3)  # the query itself is in the gallery
        assert gallery[0]["caption"].startswith("stripes")
        assert any(f"**{c}**" in vote for c in CLASSES)
    cached = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert len(cached) == 2  # one per (run, block, gallery)
    client.predict("rotation_psl", "(none)", None, 2, "B4", 3, api_name="/retrieve")
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == cached  # reused, not recomputed
    client.predict("rotation_psl", "(none)", None, 2, "B2", 3, api_name="/retrieve")
    assert len(list(cache.glob("*.npy"))) == 3


def test_odd_images_are_read_and_bad_files_get_a_message(demo, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = demo["client"]
    for kind, path in odd_images(tmp_path / "odd").items():
        result = client.predict("rotation_psl", handle_file(str(path)), 0, 3, "random", 0, api_name="/rotation")
        assert f"upload {path.name}" in result[1], kind
    messages = {"empty": "is empty", "text": "not an image", "truncated": "damaged or truncated"}
    for kind, path in bad_files(tmp_path / "bad").items():
        with pytest.raises(AppError, match=messages[kind]):
            client.predict("rotation_psl", handle_file(str(path)), 0, 3, "random", 0, api_name="/rotation")
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(large)
    assert large.stat().st_size > 2 * 2**20
    with pytest.raises(Exception, match="(?i)size|large|MB"):
        client.predict("rotation_psl", handle_file(str(large)), 0, 3, "random", 0, api_name="/rotation")
    # The app keeps serving after every failure.
    assert "gallery image #1" in client.predict("rotation_psl", None, 1, 1, "0", 0, api_name="/rotation")[1]


def test_runs_without_heads_or_with_damaged_files_get_a_message(demo):
    from gradio_client.exceptions import AppError

    client = demo["client"]
    with pytest.raises(AppError, match="no stage heads.*python train.py --task rotation"):
        client.predict("old/rotation_no_heads", None, 0, 3, "random", 0, api_name="/rotation")
    with pytest.raises(AppError, match="broken/stage1_head.keras is missing or empty"):
        client.predict("broken", None, 0, 3, "random", 0, api_name="/rotation")
    assert len(client.predict("broken", "(none)", None, 0, "B3", 2, api_name="/retrieve")[3]) == 2
    with pytest.raises(AppError, match="damaged cannot be used: backbone.keras is damaged"):
        client.predict("damaged", "(none)", None, 0, "B3", 2, api_name="/retrieve")
    with pytest.raises(AppError, match="trained on rotation, not jigsaw"):
        client.predict("rotation_psl", None, 0, 1, -1, 0, api_name="/jigsaw")
    with pytest.raises(AppError, match="outside C1"):
        client.predict("jigsaw_psl", None, 0, 1, 99, 0, api_name="/jigsaw")
    # A run without heads still serves retrieval.
    result = client.predict("old/rotation_no_heads", "(none)", None, 0, "B3", 2, api_name="/retrieve")
    assert len(result[3]) == 2
    runs = client.predict(api_name="/runs")
    rows = {row[0]: row for row in runs[1]["data"]}
    assert sorted(rows) == ["broken", "damaged", "jigsaw_psl", "old/rotation_no_heads", "rotation_psl"]
    assert rows["damaged"][-1] == "backbone.keras is damaged (not a .keras archive)"
    assert rows["rotation_psl"][1:3] == ["rotation", "psl"] and rows["rotation_psl"][-1] == "ready"
    assert rows["rotation_psl"][6].startswith("S1 ") and " · S3 " in rows["rotation_psl"][6]  # pretext accuracy
    assert rows["rotation_psl"][4:6] == ["synthetic", "3 x 1"] and rows["rotation_psl"][8] == "3"
    assert rows["old/rotation_no_heads"][8] == "none (retrieval only)"
    # The rotation tab offers runs with heads first; damaged runs are not offered at all.
    assert runs[2]["choices"][0][0] == "broken" and [c[0] for c in runs[2]["choices"]][-1] == "old/rotation_no_heads"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_every_tab_in_a_real_browser(demo, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    picture = tmp_path / "query.png"
    Image.fromarray(synthetic_images(1, seed=3)[0]).save(picture)
    bad = bad_files(tmp_path / "bad")["text"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1280, "height": 1200})
        page.goto(demo["url"])
        expect(page.get_by_text("5 run(s) under")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "runs.png"), full_page=True)

        def upload(tab_panel, path):
            clear = tab_panel.get_by_role("button", name="Clear")
            if clear.count():  # a file is shown already: remove it, the file input comes back
                clear.first.click()
            tab_panel.locator("input[type=file]").first.set_input_files(str(path))
            expect(tab_panel.get_by_role("row").filter(has_text=path.stem)).to_have_count(1, timeout=30_000)

        def choose(tab_panel, label, option):
            box = tab_panel.get_by_label(label, exact=True)
            box.click()
            page.get_by_role("option", name=option).locator("visible=true").first.click()
            expect(box).to_have_value(option)

        # Rotation: upload, predict, every stage shows a verdict and an angle of its level.
        page.get_by_role("tab", name="Rotation").click()
        panel = page.locator("#rotation")
        choose(panel, "Run", "rotation_psl")
        upload(panel, picture)
        panel.get_by_role("button", name="Predict the rotation").click()
        expect(panel.get_by_text("counter-clockwise (R3, seed 0)")).to_be_visible(timeout=60_000)
        verdicts = panel.locator(".stage-column").filter(has_text=re.compile("Right:|Wrong:|Not in its level:"))
        expect(verdicts).to_have_count(3, timeout=30_000)
        text = panel.inner_text()
        assert sum(f"{45 * k}°" in text for k in range(8)) >= 2
        page.screenshot(path=str(shots / "rotation.png"), full_page=True)

        # A bad upload: the message is in the page and the tab works again afterwards.
        upload(panel, bad)
        panel.get_by_role("button", name="Predict the rotation").click()
        expect(page.get_by_text("is not an image that can be read").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "rotation_error.png"), full_page=True)

        # Jigsaw: the puzzle and every stage's top permutations.
        page.get_by_role("tab", name="Jigsaw").click()
        panel = page.locator("#jigsaw")
        upload(panel, picture)
        panel.get_by_role("button", name="Solve the puzzle").click()
        expect(panel.get_by_text("shuffled by")).to_be_visible(timeout=60_000)
        expect(panel.locator(".stage-column").get_by_text("#").first).to_be_visible()
        assert panel.locator(".stage-column").filter(has_text="head on").count() == 3
        page.screenshot(path=str(shots / "jigsaw.png"), full_page=True)

        # Retrieval: k neighbours for two runs side by side.
        page.get_by_role("tab", name="Retrieval").click()
        panel = page.locator("#retrieval")
        upload(panel, picture)
        choose(panel, "Run A", "rotation_psl")
        choose(panel, "Run B (optional)", "jigsaw_psl")
        panel.get_by_role("button", name="Find neighbours").click()
        expect(panel.get_by_text("kNN vote")).to_have_count(2, timeout=60_000)
        expect(panel.locator(".grid-wrap img, .gallery img, button img").nth(15)).to_be_visible(timeout=30_000)
        assert panel.inner_text().count(" · 0.") + panel.inner_text().count(" · 1.") >= 16
        page.screenshot(path=str(shots / "retrieval.png"), full_page=True)
        browser.close()
    assert sorted(p.name for p in shots.iterdir()) == ["jigsaw.png", "retrieval.png", "rotation.png",
                                                        "rotation_error.png", "runs.png"]


def test_without_runs_the_page_says_how_to_train_one(tmp_path):
    sys.path.insert(0, REPO)
    from apps.core import Gallery
    from apps.page import DemoApp

    app = DemoApp(str(tmp_path / "nothing_here"), Gallery("cifar10:test", str(tmp_path), 10, str(tmp_path)))
    rows, message = app.runs_table()
    command = f"python train.py --task rotation --config cifar10_small --data_dir ../shared/tfds --output_dir " \
              f"{tmp_path / 'nothing_here' / 'rotation_psl'}"
    assert rows == [] and "No runs under" in message and command in message  # a run Refresh will find


def test_bad_flags_and_a_missing_gallery_are_one_message(tmp_path):
    def demo(*flags):
        return subprocess.run([sys.executable, os.path.join(REPO, "apps", "demo.py"), *flags], capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    result = demo("--max_upload_mb=-1", f"--runs_dir={tmp_path}")
    assert result.returncode != 0 and "flag --max_upload_mb=-1: must be an integer in [1, 2048]" in result.stderr
    assert "Traceback" not in result.stderr
    result = demo(f"--data_dir={tmp_path}", f"--runs_dir={tmp_path}", "--port=7999", "--nodownload")
    assert result.returncode == 2 and "not prepared in --data_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_runs_load_once_and_the_cache_is_bounded(demo):
    sys.path.insert(0, REPO)
    from apps.core import Gallery
    from apps.page import DemoApp

    root = demo["root"]
    app = DemoApp(str(root / "runs"), Gallery(f"folder:{root / 'gallery'}", "", 24, str(root / "cache2")),
                  max_loaded_runs=1)
    first = app.load_run("rotation_psl")
    assert app.load_run("rotation_psl") is first and app.cache.loads == 1
    first.stages()
    assert first.stages() is first.stages()  # heads and stage backbones load once per run
    app.load_run("jigsaw_psl")  # capacity 1: rotation_psl is dropped ...
    second = app.load_run("rotation_psl")
    assert second is not first and app.cache.loads == 3  # ... and loaded again
    os.utime(root / "runs" / "rotation_psl" / "backbone.keras")  # a run whose files changed is loaded again
    assert app.load_run("rotation_psl") is not second and app.cache.loads == 4


def test_a_run_still_training_shows_its_settings_and_progress(tmp_path):
    from apps.core import discover_runs

    run = tmp_path / "runs" / "going"
    run.mkdir(parents=True)
    state = {"config": {"task": "simclr", "mode": "psl", "backbone": "resnet18", "width": 0.5,
                        "dataset": "cifar10", "epochs_per_stage": 5},
             "stage": 2, "epoch": 3, "step": 0, "stages": [{"stage": 1, "final_accuracy": 0.5}]}
    (run / "state.json").write_text(json.dumps(state))
    (info,) = discover_runs(str(tmp_path / "runs"))
    row = info.row()
    assert row[:5] == ["going", "simclr", "psl", "resnet18 x0.5", "cifar10"]
    assert "stage 2, 3 epoch(s) done" in info.problem and "--resume" in info.problem
    assert row[8] == "-"  # no heads offered for a run that cannot be used yet
