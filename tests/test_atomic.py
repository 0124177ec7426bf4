"""Every file psl-keras writes goes through one atomic writer: a failed write leaves the old file and no debris."""

import json
import os

import numpy as np
import pytest

from psl_keras.atomic import TEMP_PREFIX, atomic_path, write_atomic, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_nothing_else(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write('{"step": 2, "half')
            raise RuntimeError("killed while writing")
    assert json.loads(path.read_text()) == {"step": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_writers_that_add_a_suffix_write_the_file_itself(tmp_path):
    """np.save / np.savez append .npy / .npz to a name without it, and Keras insists on .keras: the temporary
    name keeps the target's ending, so what they write is what gets renamed into place."""
    for name, save in (("a.npy", lambda p: np.save(p, np.arange(3))),
                       ("b.npz", lambda p: np.savez(p, x=np.arange(3)))):
        with atomic_path(str(tmp_path / name)) as tmp:
            assert os.path.basename(tmp).startswith(TEMP_PREFIX) and tmp.endswith(name)
            save(tmp)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["x"], np.arange(3))
    write_atomic(str(tmp_path / "c.txt"), "text\n")
    write_atomic(str(tmp_path / "d.bin"), b"\0\1")
    assert (tmp_path / "c.txt").read_text() == "text\n" and (tmp_path / "d.bin").read_bytes() == b"\0\1"
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "b.npz", "c.txt", "d.bin"]
