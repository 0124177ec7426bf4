"""Pretext-task registry. Adding a task: one module with a `Task` subclass, one line here."""

from psl_keras.errors import PSLError
from psl_keras.tasks.base import Task
from psl_keras.tasks.jigsaw import JigsawTask
from psl_keras.tasks.mocov2 import MoCoV2Task
from psl_keras.tasks.rotation import RotationTask
from psl_keras.tasks.simclr import SimCLRTask

TASKS = {
    "rotation": RotationTask,
    "jigsaw": JigsawTask,
    "simclr": SimCLRTask,
    "mocov2": MoCoV2Task,
}


def build_task(name, image_size, head_hidden=256, sync_bn=False, options=None):
    """Instantiates a registered task for square inputs of side `image_size`.

    `options` are the task's own settings (its OPTIONS); unknown ones and impossible values end in a
    PSLError that names the flag.
    """
    if name not in TASKS:
        raise PSLError(f"Unknown task {name!r}. Choose one of: {', '.join(sorted(TASKS))} (--task).")
    cls = TASKS[name]
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.OPTIONS))
    if unknown:
        raise PSLError(f"Task {name} has no option(s) {', '.join(unknown)}; it has: "
                       f"{', '.join(sorted(cls.OPTIONS)) or 'none'}.")
    try:
        return cls(image_size, head_hidden=head_hidden, sync_bn=sync_bn, **options)
    except ValueError as err:
        raise PSLError(f"--task={name}: {err} (see the --{name}_* flags).") from None


__all__ = ["TASKS", "Task", "build_task"]
