"""Driving the demo as a visitor does: `python apps/demo.py` in its own process, Debian's Chromium through
Playwright. Shared by the latency benchmark and the screenshots in docs/demo.md."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def demo_server(*flags, cache_dir=None):
    """Starts the demo on a free port; yields (url, seconds from process start to page served)."""
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="demo_cache_")
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "apps", "demo.py"), f"--port={port}",
                                f"--cache_dir={cache_dir}", *flags], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if process.poll() is not None:
                    log.seek(0)
                    sys.exit("the demo did not start:\n" + log.read()[-3000:])
                time.sleep(0.1)
        yield url, time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def browser_page(url, width=1280, height=1100):
    """A headless Chromium page open at `url`."""
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        sys.exit("Debian's chromium is needed (apt-get install chromium).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        try:
            yield page
        finally:
            browser.close()


def choose(page, panel, label, option):
    """Picks `option` in the dropdown labelled `label` inside `panel`."""
    from playwright.sync_api import expect

    box = panel.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=option).locator("visible=true").first.click()
    expect(box).to_have_value(option)


def open_tab(page, name, panel_id):
    page.get_by_role("tab", name=name).click()
    return page.locator(f"#{panel_id}")


def set_gallery_image(panel, index):
    """Types a gallery image number into the panel's input (the page previews it)."""
    field = panel.get_by_label("…or gallery image #", exact=False).first
    field.fill(str(index))
    field.press("Enter")
