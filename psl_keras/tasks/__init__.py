"""Pretext-task registry. Adding a task: one module with a `Task` subclass, one line here."""

from psl_keras.errors import PSLError
from psl_keras.tasks.base import Task
from psl_keras.tasks.rotation import RotationTask

TASKS = {
    "rotation": RotationTask,
}


def build_task(name, image_size, **options):
    """Instantiates a registered task for square inputs of side `image_size`."""
    if name not in TASKS:
        raise PSLError(f"Unknown task {name!r}. Choose one of: {', '.join(sorted(TASKS))} (--task).")
    return TASKS[name](image_size, **options)


__all__ = ["TASKS", "Task", "build_task"]
