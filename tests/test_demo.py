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


def _picture(html):
    """The image a stage's picture (an <img> with a data URI) shows."""
    import base64
    import io

    data = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _confidences(label_output):
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def test_rotation_endpoint_shows_each_stage_on_its_own_level(demo):
    result = demo["client"].predict("rotation_psl", None, 3, "2", "90", 0, api_name="/rotation")
    view, status = result[0], result[1]
    assert Image.open(view).size[0] >= 160 and "turned **90°**" in status and "#3 (circles, " in status
    # Per stage: title, probabilities, picture, verdict.
    stages = [result[2 + 4 * i: 6 + 4 * i] for i in range(3)]
    angles = [{"0°", "180°"}, {"0°", "90°", "180°", "270°"}, {f"{45 * k}°" for k in range(8)}]
    for (title, probabilities, picture, verdict), expected in zip(stages, angles):
        assert f"chance {100 / len(expected):.3g}%" in title  # what guessing at random gets on the head's level
        confidences = _confidences(probabilities)
        assert set(confidences) == expected and sum(confidences.values()) == pytest.approx(1.0, abs=1e-6)
        assert probabilities["label"] == max(confidences, key=confidences.get)
        assert _picture(picture).size[0] >= 160
    assert "Not in its level" in stages[0][3]  # 90° is not an angle of R1
    for title, probabilities, _, verdict in stages[1:]:
        right = probabilities["label"] == "90°"
        assert verdict.startswith("**Right:**" if right else "**Wrong:**"), verdict


def test_jigsaw_endpoint_names_permutations_of_each_stages_set(demo):
    from psl_keras.tasks import build_task

    task = build_task("jigsaw", 32, options={"set_sizes": "4,8,16"})
    result = demo["client"].predict("jigsaw_psl", None, 5, "2", 6, 1, api_name="/jigsaw")
    applied = task.level_permutations(2)[6]
    grid = " / ".join(" ".join(str(v) for v in applied[r:r + 3]) for r in (0, 3, 6))
    assert "permutation **#6** of C2" in result[1] and f"`{grid}`" in result[1]  # the permutation as its grid
    for i, size in enumerate((4, 8, 16)):
        title, top5, picture, verdict = result[2 + 4 * i: 6 + 4 * i]
        assert f"C{i + 1} ({size}) · chance {100 / size:.3g}%" in title
        names = list(_confidences(top5))
        assert len(names) == min(5, size)
        for name in names:  # "#index · n/9 tiles in place", each a member of that stage's own set
            index, placed = re.fullmatch(r"#(\d+) · (\d)/9 tiles in place", name).groups()
            assert int(index) < size
            assert int(placed) == sum(int(a == b) for a, b in zip(task.level_permutations(3)[int(index)], applied))
        if i == 0:
            assert "Not in its set" in verdict  # permutation #6 is not in C1 (4 permutations)
        else:
            right = top5["label"].startswith("#6 ·")
            assert verdict.startswith("**Right:**" if right else "**Wrong:**")


def test_retrieval_two_runs_side_by_side_with_cached_gallery_embeddings(demo):
    client, cache = demo["client"], demo["root"] / "cache"
    result = client.predict("rotation_psl", "jigsaw_psl", None, 13, "B4", 5, api_name="/retrieve")
    query = re.search(r"gallery image #13 \((stripes, \d+\.png)\)", result[1]).group(1)
    assert "left out of its neighbours" in result[1]
    for title, grid, vote, found in (result[2:6], result[6:10]):
        assert len(found) == 5 and grid.count("<img") == 5
        similarities = [n["similarity"] for n in found]
        assert similarities == sorted(similarities, reverse=True) and -1.0 <= min(similarities) <= max(similarities) < 1.0
        assert 13 not in [n["index"] for n in found] and query not in grid  # the query is not its own neighbour
        assert all(re.fullmatch(r"(circles|stripes), \d+\.png", n["caption"]) for n in found)  # class and file
        assert all(f'{n["caption"]} · {n["similarity"]:.3f}' in grid for n in found)
        assert any(f"**{c}**" in vote for c in CLASSES)
    cached = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    # One file per (run, block, gallery): one pass embeds every block of a run (start-up does every run's).
    assert len(cached) % 5 == 0 and len(cached) >= 10
    for block in ("B4", "B2"):
        client.predict("rotation_psl", "(none)", None, 2, block, 3, api_name="/retrieve")
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == cached  # reused, not recomputed


def test_similarities_are_centred_so_deep_blocks_discriminate(demo):
    """Pooled post-ReLU features all point one way; centred on the gallery's mean, B5's similarities spread."""
    result = demo["client"].predict("rotation_psl", "(none)", None, 0, "B5", 23, api_name="/retrieve")
    similarities = [n["similarity"] for n in result[5]]
    assert len(similarities) == 23 and max(similarities) - min(similarities) > 0.3


def test_api_names_its_outputs_and_takes_the_levels_it_lists(demo):
    info = demo["client"].view_api(print_info=False, return_format="dict")["named_endpoints"]
    returns = [r["label"] for r in info["/rotation"]["returns"]]
    assert "status" in returns and "S1 verdict" in returns and not any(r.startswith("value_") for r in returns)
    level = next(p for p in info["/rotation"]["parameters"] if "Level" in p["label"])
    listed = re.findall(r"'(\d)'", level["python_type"]["type"])
    assert listed == ["1", "2", "3"]
    for value in listed:  # every value the API lists is accepted
        assert f"(R{value}, seed 0)" in demo["client"].predict("rotation_psl", None, 1, value, "random", 0,
                                                                api_name="/rotation")[1]


def test_odd_images_are_read_and_bad_files_get_a_message(demo, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = demo["client"]
    for kind, path in odd_images(tmp_path / "odd").items():
        result = client.predict("rotation_psl", handle_file(str(path)), 0, "3", "random", 0, api_name="/rotation")
        assert f"upload {path.name}" in result[1], kind
    messages = {"empty": "is empty", "text": "not an image", "truncated": "damaged or truncated"}
    for kind, path in bad_files(tmp_path / "bad").items():
        with pytest.raises(AppError, match=messages[kind]):
            client.predict("rotation_psl", handle_file(str(path)), 0, "3", "random", 0, api_name="/rotation")
    large = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)).save(large)
    assert large.stat().st_size > 2 * 2**20
    with pytest.raises(Exception, match="(?i)size|large|MB"):
        client.predict("rotation_psl", handle_file(str(large)), 0, "3", "random", 0, api_name="/rotation")
    # The app keeps serving after every failure.
    assert "gallery image #1" in client.predict("rotation_psl", None, 1, "1", "0", 0, api_name="/rotation")[1]


def test_runs_without_heads_or_with_damaged_files_get_a_message(demo):
    from gradio_client.exceptions import AppError

    client = demo["client"]
    with pytest.raises(AppError, match="no stage heads.*python train.py --task rotation"):
        client.predict("old/rotation_no_heads", None, 0, "3", "random", 0, api_name="/rotation")
    with pytest.raises(AppError, match="broken/stage1_head.keras is missing or empty"):
        client.predict("broken", None, 0, "3", "random", 0, api_name="/rotation")
    assert len(client.predict("broken", "(none)", None, 0, "B3", 2, api_name="/retrieve")[5]) == 2
    with pytest.raises(AppError, match="damaged cannot be used: backbone.keras is damaged"):
        client.predict("damaged", "(none)", None, 0, "B3", 2, api_name="/retrieve")
    with pytest.raises(AppError, match="trained on rotation, not jigsaw"):
        client.predict("rotation_psl", None, 0, "1", -1, 0, api_name="/jigsaw")
    with pytest.raises(AppError, match="outside C1"):
        client.predict("jigsaw_psl", None, 0, "1", 99, 0, api_name="/jigsaw")
    with pytest.raises(AppError, match="There is no run nowhere under .*runs there: .*rotation_psl"):
        client.predict("nowhere", None, 0, "1", -1, 0, api_name="/jigsaw")  # never existed: not "no longer"
    with pytest.raises(AppError, match="No jigsaw run chosen.*python train.py --task jigsaw --config cifar10_quick"):
        client.predict("(none)", None, 0, "1", -1, 0, api_name="/jigsaw")
    # A run without heads still serves retrieval.
    result = client.predict("old/rotation_no_heads", "(none)", None, 0, "B3", 2, api_name="/retrieve")
    assert len(result[5]) == 2
    runs = client.predict(api_name="/runs")
    rows = {row[0]: row for row in runs[1]["data"]}
    assert sorted(rows) == ["broken", "damaged", "jigsaw_psl", "old/rotation_no_heads", "rotation_psl"]
    assert rows["damaged"][-1] == "backbone.keras is damaged (not a .keras archive)"
    assert rows["rotation_psl"][1:3] == ["rotation", "psl"] and rows["rotation_psl"][-1] == "ready"
    assert rows["rotation_psl"][6].startswith("S1 ") and " · S3 " in rows["rotation_psl"][6]  # pretext accuracy
    # beside the chance level of each stage's own level (R1: 2 angles, R3: 8)
    assert "% (chance 50%) · S2 " in rows["rotation_psl"][6] and rows["rotation_psl"][6].endswith("(chance 12.5%)")
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

        # A bad upload: the message is in the page, and the previous answer is gone (no old result under a new
        # input).
        upload(panel, bad)
        panel.get_by_role("button", name="Predict the rotation").click()
        expect(page.get_by_text("is not an image that can be read").first).to_be_visible(timeout=30_000)
        expect(verdicts).to_have_count(0)
        expect(panel.get_by_text("counter-clockwise (R3, seed 0)")).to_have_count(0)
        page.screenshot(path=str(shots / "rotation_error.png"), full_page=True)

        # A clickable example becomes the input, previewed before any button is pressed.
        panel.get_by_role("button", name="Clear").first.click()
        panel.locator(".thumbnail-item, .thumbnails button, .grid-wrap button").nth(4).click()
        expect(panel.get_by_text("Input: gallery image #4")).to_be_visible(timeout=30_000)
        panel.get_by_role("button", name="Predict the rotation").click()
        expect(panel.get_by_text("gallery image #4")).to_have_count(2, timeout=60_000)  # preview and result

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
        expect(panel.locator(".neighbours img").nth(15)).to_be_visible(timeout=30_000)
        assert len(re.findall(r" · -?[01]\.\d{3}", panel.inner_text())) >= 16
        page.screenshot(path=str(shots / "retrieval.png"), full_page=True)
        # On a phone-sized screen every neighbour stays inside the page.
        page.set_viewport_size({"width": 420, "height": 900})
        page.wait_for_timeout(500)
        images = panel.locator(".neighbours img")
        boxes = [images.nth(i).bounding_box() for i in range(images.count())]
        assert len(boxes) >= 8 and max(b["x"] + b["width"] for b in boxes if b) <= 420
        page.screenshot(path=str(shots / "retrieval_narrow.png"), full_page=True)
        browser.close()
    assert sorted(p.name for p in shots.iterdir()) == ["jigsaw.png", "retrieval.png", "retrieval_narrow.png",
                                                        "rotation.png", "rotation_error.png", "runs.png"]


def test_without_runs_the_page_says_how_to_train_one(tmp_path):
    sys.path.insert(0, REPO)
    from psl_keras.demo.core import Gallery
    from psl_keras.demo.page import DemoApp

    app = DemoApp(str(tmp_path / "nothing_here"), Gallery("cifar10:test", str(tmp_path), 10, str(tmp_path)))
    rows, message = app.runs_table()
    command = f"python train.py --task rotation --config cifar10_quick --output_dir " \
              f"{tmp_path / 'nothing_here' / 'rotation_psl'}"
    assert rows == [] and "No runs under" in message and command in message  # a run Refresh will find


def test_bad_flags_and_a_missing_gallery_are_one_message(tmp_path):
    def demo(*flags):
        return subprocess.run([sys.executable, os.path.join(REPO, "apps", "demo.py"), *flags], capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    result = demo("--max_upload_mb=-1", f"--runs_dir={tmp_path}")
    assert result.returncode != 0 and "flag --max_upload_mb=-1: must be an integer in [1, 2048]" in result.stderr
    assert "Traceback" not in result.stderr
    result = demo(f"--data_dir={tmp_path}", f"--runs_dir={tmp_path}", f"--port={_free_port()}", "--nodownload")
    assert result.returncode == 2 and "not prepared in --data_dir" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_runs_load_once_and_the_cache_is_bounded(demo):
    sys.path.insert(0, REPO)
    from psl_keras.demo.core import Gallery
    from psl_keras.demo.page import DemoApp

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
    from psl_keras.demo.core import discover_runs

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


def _start_demo(root, *flags):
    """The app on a free port (a subprocess, as users start it); (process, url, log path)."""
    port = _free_port()
    log_path = root / f"demo_{port}.log"
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "apps", "demo.py"), f"--port={port}", *flags],
                               cwd=REPO, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return process, url, log_path
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail("the demo did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)


def test_a_flat_folder_gallery_names_files_and_votes_nothing(demo, tmp_path):
    """Images not in class sub-folders: retrieval works, captions are file names, there is no vote."""
    from gradio_client import Client

    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((demo["root"] / "gallery").rglob("*.png"))[:10]:
        shutil.copy(path, flat / f"{path.parent.name}_{path.name}")
    process, url, log = _start_demo(tmp_path, f"--runs_dir={demo['root'] / 'runs'}", f"--gallery=folder:{flat}",
                                    f"--cache_dir={tmp_path / 'cache'}")
    try:
        client = Client(url, verbose=False)
        result = client.predict("rotation_psl", "(none)", None, 0, "B4", 4, api_name="/retrieve")
        assert re.search(r"gallery image #0 \(circles_\d+\.png\)", result[1])
        assert all(re.fullmatch(r"(circles|stripes)_\d+\.png", n["caption"]) for n in result[5])
        assert "no class labels" in result[4]
        status = client.predict("rotation_psl", None, 2, "3", "random", 0, api_name="/rotation")[1]
        assert re.search(r"gallery image #2 \(\w+_\d+\.png\)", status) and "(-1)" not in status
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_port_in_use_and_a_runs_dir_that_is_a_file_are_one_message(tmp_path):
    def demo(*flags):
        return subprocess.run([sys.executable, os.path.join(REPO, "apps", "demo.py"), *flags], capture_output=True,
                              text=True, timeout=300, cwd=REPO)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = demo(f"--runs_dir={tmp_path}", f"--port={port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and f"--port={port + 1}" in result.stderr
    assert "GRADIO_SERVER_PORT" not in result.stderr + result.stdout
    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    result = demo(f"--runs_dir={summary}", f"--port={_free_port()}")
    assert result.returncode == 2 and f"--runs_dir={summary} is a file" in result.stderr
    assert f"--runs_dir={tmp_path}" in result.stderr and "Traceback" not in result.stderr


def test_a_runs_dir_that_is_one_run_names_it_by_its_folder(demo):
    from psl_keras.demo.core import discover_runs

    (info,) = discover_runs(str(demo["root"] / "runs" / "rotation_psl"))
    assert info.name == "rotation_psl" and not info.problem
