"""TensorFlow, imported on first use.

Model code (backbones, the stage model, the tasks' heads and losses) must import where TensorFlow is absent:
Keras on JAX. Modules that also hold a TensorFlow input pipeline import `tf` from here, so the
pipeline loads TensorFlow when it first runs and the rest of the module works without it.
"""

import importlib
import types


class LazyModule(types.ModuleType):
    """A module proxy that imports the real module on the first attribute access."""

    def __getattr__(self, name):
        return getattr(importlib.import_module(self.__name__), name)


tf = LazyModule("tensorflow")
