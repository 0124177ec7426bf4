"""Times the demo as a visitor meets it, in a real browser (headless Chromium): start-up to page served, the
first retrieval over a fresh gallery cache, and each tab's click-to-result time, warm (median of --repeats).

  python benchmarks/demo_latency.py --runs_dir runs/demo --run_a rotation_psl --run_b rotation_e2e \
      --jigsaw_run jigsaw_psl --data_dir ~/tensorflow_datasets

A click is timed from the button press until the result of that click is on screen: the status line names the
query image and every stage's verdict (or both runs' neighbours, with their images decoded) is shown.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from demo_browser import browser_page, choose, demo_server, open_tab, set_gallery_image  # noqa: E402

# True once the panel's status names `gallery image #i` and `count` results (verdicts, or neighbour galleries
# whose images have all decoded) are on screen.
RESULT_SHOWN = """([panel, marker, kind, count]) => {
  const root = document.querySelector(panel);
  if (!root || !root.innerText.includes(marker)) return false;
  if (kind === "verdicts") {
    const shown = [...root.querySelectorAll('.stage-column')].filter(c => /Right:|Wrong:|Not in its/.test(c.innerText));
    return shown.length >= count;
  }
  const inline = [...root.querySelectorAll('.neighbours img')];  // one grid of inline pictures per run
  const images = inline.length ? inline : [...root.querySelectorAll('.grid-wrap img')];  // earlier pages: galleries
  return (root.innerText.match(/kNN vote/g) || []).length >= count
    && images.length >= 8 * count && images.every(img => img.complete && img.naturalWidth > 0);
}"""


def timed_click(page, panel_id, button, index, kind, count, timeout=600_000):
    panel = page.locator(f"#{panel_id}")
    set_gallery_image(panel, index)
    page.wait_for_timeout(300)  # the preview that typing the number triggers is not part of the click
    start = time.perf_counter()
    panel.get_by_role("button", name=button).click()
    page.wait_for_function(RESULT_SHOWN, arg=[f"#{panel_id}", f"gallery image #{index} (", kind, count],
                           polling="raf", timeout=timeout)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--run_a", required=True, help="a rotation run (its name under --runs_dir)")
    parser.add_argument("--run_b", required=True, help="a second run, shown beside run A in retrieval")
    parser.add_argument("--jigsaw_run", default="", help="a jigsaw run, to time the jigsaw tab too")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--gallery", default="cifar10:test")
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()

    flags = [f"--runs_dir={args.runs_dir}", f"--data_dir={args.data_dir}", f"--gallery={args.gallery}"]
    rows, warm = [], {}
    with demo_server(*flags) as (url, startup), browser_page(url) as page:
        rows.append(("start-up to page served", startup))
        page.get_by_text("run(s) under").first.wait_for(timeout=120_000)
        # First retrieval, right after start-up: the gallery embeddings come from the start-up's background work
        # (or are made now, for whatever it has not reached yet).
        panel = open_tab(page, "Retrieval", "retrieval")
        choose(page, panel, "Run A", args.run_a)
        choose(page, panel, "Run B (optional)", args.run_b)
        rows.append((f"first retrieval ({args.gallery}, {args.run_a} + {args.run_b}, fresh cache)",
                     timed_click(page, "retrieval", "Find neighbours", 0, "neighbours", 2)))
        warm["retrieval, two runs, k = 8"] = [timed_click(page, "retrieval", "Find neighbours", i, "neighbours", 2)
                                              for i in range(1, args.repeats + 1)]
        panel = open_tab(page, "Rotation", "rotation")
        choose(page, panel, "Run", args.run_a)
        timed_click(page, "rotation", "Predict the rotation", 0, "verdicts", 3)  # loads the stage models
        warm["rotation, 3 stages"] = [timed_click(page, "rotation", "Predict the rotation", i, "verdicts", 3)
                                      for i in range(1, args.repeats + 1)]
        if args.jigsaw_run:
            panel = open_tab(page, "Jigsaw", "jigsaw")
            choose(page, panel, "Run", args.jigsaw_run)
            timed_click(page, "jigsaw", "Solve the puzzle", 0, "verdicts", 3)
            warm["jigsaw, 3 stages"] = [timed_click(page, "jigsaw", "Solve the puzzle", i, "verdicts", 3)
                                        for i in range(1, args.repeats + 1)]
    print("| measurement | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")
    for name, times in warm.items():
        print(f"| {name}, warm, click to result: median of {len(times)} (min-max) | {statistics.median(times):.2f} "
              f"({min(times):.2f}-{max(times):.2f}) |")


if __name__ == "__main__":
    main()
