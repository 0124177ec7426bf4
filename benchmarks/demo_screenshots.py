"""Screenshots of every tab of the demo over real runs, for docs/demo.md (and to look at before calling a page done).

  python benchmarks/demo_screenshots.py --runs_dir runs/demo --run_a rotation_psl --run_b rotation_e2e \
      --jigsaw_run jigsaw_psl --data_dir ~/tensorflow_datasets --out docs

Starts `apps/demo.py` on a free localhost port, drives it in headless Chromium (Debian's `chromium`, through
Playwright) with gallery image --image_index as the query, and writes runs.png, rotation.png, jigsaw.png and
retrieval.png into --out.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo_browser import browser_page, choose, demo_server, open_tab, set_gallery_image  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--run_a", required=True, help="rotation run shown in the rotation tab and as retrieval A")
    parser.add_argument("--run_b", required=True, help="second run for retrieval B")
    parser.add_argument("--jigsaw_run", default="", help="jigsaw run for the jigsaw tab (skipped if empty)")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--image_index", type=int, default=7, help="gallery image used as the query")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    from playwright.sync_api import expect

    os.makedirs(args.out, exist_ok=True)
    shot = lambda name: page.screenshot(path=os.path.join(args.out, name), full_page=True)  # noqa: E731
    with demo_server(f"--runs_dir={args.runs_dir}", f"--data_dir={args.data_dir}") as (url, _), \
            browser_page(url) as page:
        expect(page.get_by_role("gridcell", name=args.run_a).first).to_be_visible(timeout=120_000)
        page.get_by_text("How to read this").click()
        shot("runs.png")
        page.get_by_text("How to read this").click()

        def ask(panel, button, done):
            set_gallery_image(panel, args.image_index)
            expect(panel.get_by_text(f"Input: gallery image #{args.image_index}")).to_be_visible(timeout=120_000)
            panel.get_by_role("button", name=button).click()
            expect(done).to_be_visible(timeout=600_000)
            page.wait_for_timeout(1500)  # images decode

        panel = open_tab(page, "Rotation", "rotation")
        choose(page, panel, "Run", args.run_a)
        ask(panel, "Predict the rotation", panel.get_by_text("counter-clockwise"))
        shot("rotation.png")
        if args.jigsaw_run:
            panel = open_tab(page, "Jigsaw", "jigsaw")
            choose(page, panel, "Run", args.jigsaw_run)
            ask(panel, "Solve the puzzle", panel.get_by_text("shuffled by"))
            shot("jigsaw.png")
        panel = open_tab(page, "Retrieval", "retrieval")
        choose(page, panel, "Run A", args.run_a)
        choose(page, panel, "Run B (optional)", args.run_b)
        ask(panel, "Find neighbours", panel.get_by_text("kNN vote").nth(1))
        shot("retrieval.png")
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
