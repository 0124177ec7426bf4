"""The psl-keras demo: `python apps/demo.py --runs_dir runs --data_dir ../shared/tfds`. The app is
psl_keras/demo/ (app.py: flags and serving; page.py, tabs/, core.py), installed as `psl-demo` by
`pip install .`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from psl_keras.demo.app import run  # noqa: E402

if __name__ == "__main__":
    run()
