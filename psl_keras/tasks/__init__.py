"""Pretext-task registry. Adding a task: one module with a `Task` subclass, one line here."""

from psl_keras.errors import PSLError
from psl_keras.tasks.base import Task
from psl_keras.tasks.byol import BYOLTask
from psl_keras.tasks.jigsaw import JigsawTask
from psl_keras.tasks.mocov2 import MoCoV2Task
from psl_keras.tasks.rotation import RotationTask
from psl_keras.tasks.simclr import SimCLRTask

TASKS = {
    "rotation": RotationTask,
    "jigsaw": JigsawTask,
    "simclr": SimCLRTask,
    "mocov2": MoCoV2Task,
    "byol": BYOLTask,
}


def option_spec(cls, option):
    """(default, help, allowed) of a task option; allowed is a ranges.Range, a tuple of choices or None."""
    entry = cls.OPTIONS[option]
    return (entry + (None,))[:3]


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
    for option, value in options.items():
        allowed = option_spec(cls, option)[2]
        if isinstance(allowed, tuple) and value not in allowed:
            raise PSLError(f"--{name}_{option}={value!r}: must be one of {', '.join(allowed)}.")
        if allowed is not None and not isinstance(allowed, tuple) and not allowed.contains(value):
            raise PSLError(allowed.error(f"{name}_{option}", value))
    try:
        return cls(image_size, head_hidden=head_hidden, sync_bn=sync_bn, **options)
    except ValueError as err:
        raise PSLError(f"--task={name}: {err} (see the --{name}_* flags).") from None


def complete_options(name, options=None, saved=False):
    """Every option of task `name`: the values in `options`, the others from the task's defaults.

    Written into a run's config, so the run records the behaviour it trained with and a later change of a
    default never alters it. `saved=True` is for the options of a run saved before some option existed: a
    missing option takes the value such runs were made with (the task's LEGACY_OPTIONS), not today's default.
    """
    if name not in TASKS:
        raise PSLError(f"Unknown task {name!r}. Choose one of: {', '.join(sorted(TASKS))} (--task).")
    cls = TASKS[name]
    defaults = {option: option_spec(cls, option)[0] for option in cls.OPTIONS}
    if saved:
        defaults.update(cls.LEGACY_OPTIONS)
    return {**defaults, **(options or {})}


__all__ = ["TASKS", "Task", "build_task", "complete_options", "option_spec"]
