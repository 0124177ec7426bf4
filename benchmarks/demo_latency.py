"""Times the demo as a user meets it: start-up, the first request to a run (its models load), warm requests per
tab (median of several), and the server's memory with two runs loaded.

  python benchmarks/demo_latency.py --runs_dir /work/runs --run_a rotation_psl --run_b rotation_e2e \
      --data_dir ../shared/tfds [--jigsaw_run jigsaw_psl]

The app runs as `python apps/demo.py` in its own process with a fresh embedding cache, driven by gradio_client.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--run_a", required=True, help="a rotation run (name under --runs_dir)")
    parser.add_argument("--run_b", required=True, help="a second run, shown beside run A in retrieval")
    parser.add_argument("--jigsaw_run", default="", help="a jigsaw run, to time the jigsaw tab too")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--gallery", default="cifar10:test")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tempfile.mkdtemp(prefix="demo_cache_")
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "apps", "demo.py"), f"--runs_dir={args.runs_dir}",
                               f"--data_dir={args.data_dir}", f"--gallery={args.gallery}", f"--port={port}",
                               f"--cache_dir={cache}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("the demo exited; run it by hand to see why")
                time.sleep(0.5)
        startup = time.perf_counter() - start
        client = Client(url, verbose=False)
        rotation = lambda run, i: client.predict(run, None, i, 3, "random", i, api_name="/rotation")  # noqa: E731
        retrieve = lambda i: client.predict(args.run_a, args.run_b, None, i, "B4", 8,  # noqa: E731
                                            api_name="/retrieve")
        rows = [("start-up (page served)", startup)]
        rows.append((f"first rotation request, {args.run_a} (loads its stage models)", timed(rotation, args.run_a, 0)))
        rows.append((f"first retrieval, {args.run_a} + {args.run_b} (loads B, embeds the gallery twice)",
                     timed(retrieve, 0)))
        rows.append(("retrieval, embeddings cached on disk", timed(retrieve, 1)))
        memory = rss_mib(server.pid)
        warm = {"rotation (3 stage heads)": [timed(rotation, args.run_a, i) for i in range(args.repeats)],
                "retrieval (two runs, k=8)": [timed(retrieve, i) for i in range(args.repeats)]}
        if args.jigsaw_run:
            jigsaw = lambda i: client.predict(args.jigsaw_run, None, i, 1, -1, i, api_name="/jigsaw")  # noqa: E731
            rows.append((f"first jigsaw request, {args.jigsaw_run}", timed(jigsaw, 0)))
            warm["jigsaw (3 stage heads)"] = [timed(jigsaw, i) for i in range(args.repeats)]
        print("| measurement | seconds |\n|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.2f} |")
        for name, times in warm.items():
            print(f"| {name}, warm: median of {len(times)} (min-max) | {statistics.median(times):.2f} "
                  f"({min(times):.2f}-{max(times):.2f}) |")
        print(f"\nServer memory (RSS) with {args.run_a} and {args.run_b} loaded: {memory:.0f} MiB "
              f"(after the jigsaw run too: {rss_mib(server.pid):.0f} MiB)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
