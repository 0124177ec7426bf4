"""The command-line programs: `psl-train` and `psl-evaluate` (also `python train.py`, `python evaluate.py` in a
checkout). Each module defines its flags when imported and sets up the environment Keras reads before Keras
loads, so nothing here imports Keras."""

from absl import flags

from psl_keras import installed_versions


def define_version_flag():
    flags.DEFINE_bool("version", False, "Print the versions of psl-keras, Keras, TensorFlow and JAX, then exit.")


def versions_line():
    """One line: psl-keras's version and the installed frameworks'."""
    versions = installed_versions()
    frameworks = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "psl_keras")
    return f"psl-keras {versions['psl_keras']} ({frameworks})"
