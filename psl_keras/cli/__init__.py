"""The command-line programs: `psl-train` and `psl-evaluate` (also `python train.py`, `python evaluate.py` in a
checkout). Each module defines its flags when imported and sets up the environment Keras reads before Keras
loads, so nothing here imports Keras."""

import sys

from absl import app, flags

from psl_keras import installed_versions


def define_version_flag():
    flags.DEFINE_bool("version", False, "Print the versions of psl-keras, Keras, TensorFlow and JAX, then exit.")


def versions_line():
    """One line: psl-keras's version and the installed frameworks'."""
    versions = installed_versions()
    frameworks = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "psl_keras")
    return f"psl-keras {versions['psl_keras']} ({frameworks})"


def start(main, usage):
    """Runs an absl program `main`: `usage` (its module's docstring) is what --help shows whether it was started
    as a console command or a script, and --version is answered before `main` runs."""
    sys.modules["__main__"].__doc__ = usage

    def main_or_versions(argv):
        if flags.FLAGS.version:
            print(versions_line())
            return 0
        return main(argv)

    app.run(main_or_versions)
