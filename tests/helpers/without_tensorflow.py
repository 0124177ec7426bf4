"""Runs a script as if TensorFlow (and what needs it) were not installed, as on the JAX-only GPU machine.

  python tests/helpers/without_tensorflow.py train.py --backend jax ...

An import hook refuses tensorflow, tensorflow_datasets and keras_cv, so they never reach sys.modules (Keras checks
sys.modules to tell whether TensorFlow is present; a None entry there would mislead it).
"""

import os
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "keras_cv")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RefuseImports:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed here (tests/helpers/without_tensorflow.py)")


if __name__ == "__main__":
    sys.meta_path.insert(0, RefuseImports())
    sys.path.insert(0, REPO)
    script = os.path.join(REPO, sys.argv[1])
    sys.argv = [script] + sys.argv[2:]
    runpy.run_path(script, run_name="__main__")
