"""psl-keras demo: what each stage predicts (rotation, jigsaw) and nearest-neighbour retrieval, runs side by side.

  psl-demo --runs_dir runs --data_dir ../shared/tfds            # http://127.0.0.1:7860
  psl-demo --runs_dir runs --gallery cifar10:test --port 8080 --host 0.0.0.0
  (from a checkout: python apps/demo.py ...)

Binds to 127.0.0.1 unless --host says otherwise; a public link only with --share.
"""

import logging as std_logging
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
from absl import app as absl_app, flags, logging as absl_logging  # noqa: E402

from psl_keras.cli import define_version_flag, start  # noqa: E402
from psl_keras.ranges import Range, define_number  # noqa: E402

FLAGS = flags.FLAGS
define_version_flag()
flags.DEFINE_string("runs_dir", "runs", "Directory searched (recursively) for run directories written by train.py.")
flags.DEFINE_string("data_dir", "", "TFDS data directory of the gallery dataset.")
flags.DEFINE_string("gallery", "cifar10:test", "Retrieval gallery and example images: DATASET:SPLIT or folder:PATH.")
define_number("gallery_size", 5000, "Images of the gallery split used (the first N).", Range(1, 10_000_000, integer=True))
flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 serves other machines too.")
define_number("port", 7860, "Port.", Range(1, 65535, integer=True))
flags.DEFINE_bool("share", False, "Also make a public gradio.live link.")
flags.DEFINE_bool("download", True, "Download and prepare the gallery's TFDS dataset if it is missing.")
define_number("max_loaded_runs", 4, "Runs kept loaded in memory at once (least recently used dropped).",
              Range(1, 1000, integer=True))
define_number("max_upload_mb", 20, "Largest accepted upload, in megabytes.", Range(1, 2048, integer=True))
flags.DEFINE_string("cache_dir", "", "Where gallery embeddings are cached (default ~/.cache/psl_keras/demo).")



def check_flags():
    """Problems the flag parser cannot see (numeric ranges are checked when the flags are parsed)."""
    problems = []
    if not FLAGS.gallery.strip():
        problems.append("--gallery is empty; give DATASET:SPLIT (e.g. cifar10:test) or folder:PATH")
    return problems


def port_problem(host, port):
    """Why the server could not listen on host:port ("" when it can)."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            return (f"cannot listen on {host}:{port} ({err.strerror or err}): another program (an earlier demo?) "
                    f"is using the port. Stop it, or pass another --port, e.g. --port={port + 1}")
    return ""


def main(argv):
    if len(argv) > 1:
        raise absl_app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    problems = check_flags() + [p for p in [port_problem(FLAGS.host, FLAGS.port)] if p]
    if problems:
        print("error: " + "; ".join(problems) + ".", file=sys.stderr)
        return 2
    std_logging.getLogger("httpx").setLevel(std_logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
    from psl_keras.demo.core import Gallery, check_runs_dir
    from psl_keras.errors import PSLError

    try:
        check_runs_dir(FLAGS.runs_dir)
    except PSLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cache_dir = FLAGS.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "psl_keras", "demo")
    gallery = Gallery(FLAGS.gallery, FLAGS.data_dir, FLAGS.gallery_size, cache_dir, FLAGS.download)
    from psl_keras.demo.page import CSS, DemoApp

    demo = DemoApp(FLAGS.runs_dir, gallery, FLAGS.max_loaded_runs, FLAGS.max_upload_mb * 2**20, FLAGS.data_dir)
    # The page is served first; the gallery and its embeddings load in the background after it. (Not beside
    # the page's imports: CPython 3.11 can fail compiling modules in two threads at once, and TFDS swaps
    # Python's import function while it loads.)
    page = demo.build()
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=FLAGS.host, server_port=FLAGS.port, share=FLAGS.share, quiet=True,
                    max_file_size=f"{FLAGS.max_upload_mb}mb", show_error=True, css=CSS, footer_links=["api"],
                    prevent_thread_lock=True)
    except OSError as err:  # the port was taken between the check and now
        print(f"error: {port_problem(FLAGS.host, FLAGS.port) or err}.", file=sys.stderr)
        return 2
    demo.warm_up()
    demo.gallery_ready.wait()
    if demo.gallery_error:  # the app stops: a page without its gallery would fail every request
        page.close()
        print(f"error: --gallery={FLAGS.gallery}: {demo.gallery_error}", file=sys.stderr)
        return 2
    print(f"{len(demo.runs)} run(s) under {os.path.abspath(FLAGS.runs_dir)}; gallery {FLAGS.gallery} "
          f"({len(gallery)} images).\nServing on {page.local_url}" + (f" and {page.share_url}" if page.share_url else
                                                                   " (--share adds a public link)")
          + "; Ctrl-C stops it.", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


def run():
    """The psl-demo command."""
    start(main, __doc__)


if __name__ == "__main__":
    run()
