"""Screenshots of every tab of the demo over real runs, for the README (and to look at before calling a page done).

  python apps/screenshots.py --runs_dir /work/runs --run_a rotation_psl --run_b rotation_e2e \
      --jigsaw_run jigsaw_small --data_dir ../shared/tfds --out docs

Starts `apps/demo.py` on a free localhost port, drives it in headless Chromium (Debian's `chromium`, through
Playwright) with a CIFAR-10 test image as the query, and writes runs.png, rotation.png, jigsaw.png and
retrieval.png into --out.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query_image(data_dir, index, path):
    """CIFAR-10 test image `index`, upscaled 4x (nearest) so it is visible in the page, as a PNG."""
    import tensorflow_datasets as tfds
    from PIL import Image

    data = tfds.load("cifar10", split=f"test[{index}:{index + 1}]", data_dir=data_dir, download=False)
    example = next(iter(tfds.as_numpy(data)))
    Image.fromarray(example["image"]).resize((128, 128), Image.NEAREST).save(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--run_a", required=True, help="rotation run shown in the rotation tab and as retrieval A")
    parser.add_argument("--run_b", required=True, help="second run for retrieval B")
    parser.add_argument("--jigsaw_run", default="", help="jigsaw run for the jigsaw tab (skipped if empty)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--image_index", type=int, default=7, help="CIFAR-10 test image used as the query")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp()
    picture = query_image(args.data_dir, args.image_index, os.path.join(work, "query.png"))
    port = free_port()
    log = open(os.path.join(work, "demo.log"), "w")
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "apps", "demo.py"), f"--runs_dir={args.runs_dir}",
         f"--data_dir={args.data_dir}", f"--port={port}", f"--cache_dir={os.path.join(work, 'cache')}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    sys.exit("the demo did not start:\n" + open(os.path.join(work, "demo.log")).read()[-3000:])
                time.sleep(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium") or shutil.which("chromium-browser"), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            expect(page.get_by_text("run(s) under")).to_be_visible(timeout=120_000)
            expect(page.get_by_role("gridcell", name=args.run_a).first).to_be_visible(timeout=120_000)
            page.screenshot(path=os.path.join(args.out, "runs.png"), full_page=True)

            def upload(panel):
                clear = panel.get_by_role("button", name="Clear")
                if clear.count():
                    clear.first.click()
                panel.locator("input[type=file]").first.set_input_files(picture)
                expect(panel.get_by_role("row").filter(has_text="query")).to_have_count(1, timeout=30_000)

            def choose(panel, label, option):
                box = panel.get_by_label(label, exact=True)
                box.click()
                page.get_by_role("option", name=option).locator("visible=true").first.click()
                expect(box).to_have_value(option)

            page.get_by_role("tab", name="Rotation").click()
            panel = page.locator("#rotation")
            choose(panel, "Run", args.run_a)
            upload(panel)
            panel.get_by_role("button", name="Predict the rotation").click()
            expect(panel.locator(".stage-column").filter(has_text="Right:").or_(
                panel.locator(".stage-column").filter(has_text="Wrong:")).first).to_be_visible(timeout=120_000)
            page.screenshot(path=os.path.join(args.out, "rotation.png"), full_page=True)

            if args.jigsaw_run:
                page.get_by_role("tab", name="Jigsaw").click()
                panel = page.locator("#jigsaw")
                choose(panel, "Run", args.jigsaw_run)
                upload(panel)
                panel.get_by_role("button", name="Solve the puzzle").click()
                expect(panel.get_by_text("shuffled by")).to_be_visible(timeout=120_000)
                page.screenshot(path=os.path.join(args.out, "jigsaw.png"), full_page=True)

            page.get_by_role("tab", name="Retrieval").click()
            panel = page.locator("#retrieval")
            upload(panel)
            choose(panel, "Run A", args.run_a)
            choose(panel, "Run B (optional)", args.run_b)
            panel.get_by_role("button", name="Find neighbours").click()
            expect(panel.get_by_text("kNN vote")).to_have_count(2, timeout=600_000)  # first time: gallery embeds
            time.sleep(2)  # let the gallery images load
            page.screenshot(path=os.path.join(args.out, "retrieval.png"), full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
