"""Writes that never leave half a file: every file psl-keras saves (run state, models, checkpoints, caches) goes
through `atomic_path`, so a crash, a kill or a power cut leaves either the old file or the new one.
"""

import contextlib
import json
import os
import tempfile

from psl_keras.faults import kill_point

TEMP_PREFIX = ".tmp_"  # what a killed write leaves behind; a run directory removes these when it opens


@contextlib.contextmanager
def atomic_path(path, kill_at=None):
    """Yields a temporary path beside `path` to write the whole file to; then puts it on disk (fsync), renames it
    over `path` and makes the rename durable (directory fsync). The temporary name ends like `path`, so writers
    that check or append a suffix (`model.save`, `np.save`) accept it. On an error `path` is untouched.
    `kill_at` names a fault-injection point between the write and the rename (`psl_keras.faults`)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=f"_{os.path.basename(path)}")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if kill_at:
            kill_point(kill_at)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def write_atomic(path, data, kill_at=None):
    """Writes `data` (text or bytes) to `path` atomically."""
    with atomic_path(path, kill_at) as tmp:
        if isinstance(data, str):
            with open(tmp, "w", newline="") as f:
                f.write(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)


def write_json_atomic(path, payload, kill_at="json_write"):
    """Writes `payload` as JSON to `path` atomically."""
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True), kill_at)


def _fsync_directory(directory):
    """Makes a rename durable: after a power cut the directory holds the new name, not the old one."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories
    finally:
        os.close(fd)
