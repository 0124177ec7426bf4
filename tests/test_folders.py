"""Image folders from the wild: unreadable files are found once, counted, named and left out
before the epoch length is computed; every readable kind becomes RGB uint8; small images are upscaled."""

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from psl_keras import data
from psl_keras.data import folders
from psl_keras.errors import PSLError

from conftest import tiny_config
from image_files import bad_files, odd_images


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path / "cache"))


def wild_folder(root):
    """3 broken files, every odd kind of valid image, and 16 ordinary 32x32 PNGs, in two classes."""
    good = root / "a"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good / f"{i:02d}.png")
    odd = odd_images(root / "b")
    bad = bad_files(root / "b")
    return odd, bad


def test_unreadable_files_are_counted_named_and_left_out_before_the_epoch_is_counted(tmp_path, capsys):
    odd, bad = wild_folder(tmp_path / "images")
    source = data.load_images(f"folder:{tmp_path / 'images'}", min_side=32)
    out = capsys.readouterr().out
    assert sorted(source.unreadable) == sorted(os.path.join("b", p.name) for p in bad.values())
    assert "3 file(s) under" in out and all(p.name in out for p in bad.values())  # said where users look
    assert source.num_examples == 16 + len(odd)  # .webp included, the broken ones not
    images = [image for image, _ in source.as_dataset().as_numpy_iterator()]
    assert len(images) == source.num_examples  # the epoch ends where its length says
    for image in images:
        assert image.dtype == np.uint8 and image.shape[2] == 3 and min(image.shape[:2]) >= 32
        assert image.shape[0] * image.shape[1] <= 1024 * 1536  # the 6000x4000 JPEG was decoded at reduced size
    with pytest.raises(PSLError, match="3 file\\(s\\) under .* cannot be read.*--on_bad_image=skip"):
        data.load_images(f"folder:{tmp_path / 'images'}", on_bad_image="error")


def test_the_scan_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    root = tmp_path / "images"
    wild_folder(root)
    files = folders.list_images(root)
    first = folders.scan(files, root)
    checked = []
    monkeypatch.setattr(folders, "check_file", lambda path: checked.append(path))
    assert folders.scan(files, root) == first and checked == []  # from the cache
    time.sleep(0.01)
    (root / "a" / "00.png").write_bytes(b"overwritten")
    files = folders.list_images(root)
    folders.scan(files, root)
    assert len(checked) == len(files)  # changed: scanned again


def test_training_on_a_wild_folder_reports_the_left_out_files_in_its_summary(tmp_path):
    from psl_keras.training.trainer import Trainer

    wild_folder(tmp_path / "images")
    config = tiny_config(tmp_path, dataset=f"folder:{tmp_path / 'images'}", batch_size=8, steps_per_epoch=1)
    summary = Trainer(config, verbose=0).train()
    assert len(summary["dataset"]["unreadable"]) == 3
    assert summary["dataset"]["num_examples"] == 16 + len(odd_images(tmp_path / "again"))
    with open(os.path.join(config.output_dir, "summary.json")) as f:
        assert json.load(f)["dataset"]["unreadable"] == summary["dataset"]["unreadable"]


def test_each_worker_decodes_only_its_share(tmp_path, monkeypatch):
    # The file list is split before decoding, so with 2 input pipelines each decodes half;
    # together they see every example once, the same split by example index as before.
    import tensorflow as tf

    root = tmp_path / "images"
    for i in range(24):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(root / f"c{i % 2}" / f"{i:02d}.png")
    decoded = []
    read = folders.read_for_training
    monkeypatch.setattr(folders, "read_for_training", lambda path, min_side=0: (decoded.append(path),
                                                                                read(path, min_side))[1])
    source = data.load_images(f"folder:{root}", verbose=False)

    def values(pipeline, count):
        decoded.clear()
        context = tf.distribute.InputContext(num_input_pipelines=count, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=count)
        batches = data.training_pipeline(source, lambda image, label, seed: (image, label), 12, seed=3,
                                         input_context=context)
        seen = sorted(int(image[0, 0, 0]) for images, _ in batches for image in images.numpy())
        return seen, len(decoded)

    everything, one_worker = values(0, 1)
    first, decoded_by_0 = values(0, 2)
    second, decoded_by_1 = values(1, 2)
    assert everything == list(range(24)) and one_worker == 24
    assert decoded_by_0 == decoded_by_1 == 12  # half each, not 24 each
    assert sorted(first + second) == everything and not set(first) & set(second)
