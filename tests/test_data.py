import os

import numpy as np
import pytest
from PIL import Image

from psl_keras import data
from psl_keras.errors import PSLError

from conftest import SHARED_TFDS, needs_cifar10


def test_missing_dataset_names_data_dir_and_how_to_prepare(tmp_path):
    with pytest.raises(PSLError) as err:
        data.load_images("cifar10", str(tmp_path), "train")
    message = str(err.value)
    assert "not prepared" in message and f"--data_dir={tmp_path}" in message
    assert "download_and_prepare" in message


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(PSLError, match="Unknown TFDS dataset 'no_such_images'"):
        data.load_images("no_such_images", str(tmp_path))


@needs_cifar10
def test_cifar10_loads_in_memory_with_labels():
    source = data.load_images("cifar10", SHARED_TFDS, "test")
    assert source.num_examples == 5000 and source.num_classes == 10
    images, labels = source.arrays
    assert images.shape == (5000, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    with pytest.raises(PSLError, match="no split 'validation'"):
        data.load_images("cifar10", SHARED_TFDS, "validation")


def _write_folder(root, corrupt=False):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        os.makedirs(root / cls)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")


def test_folder_source_labels_by_subfolder_and_skips_corrupt_images(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    source = data.load_images(f"folder:{tmp_path}")
    assert source.num_classes == 2
    pairs = list(source.as_dataset().as_numpy_iterator())
    assert len(pairs) == 6  # the corrupt file is skipped with a warning, not a crash
    assert sorted(int(label) for _, label in pairs) == [0, 0, 0, 1, 1, 1]
    assert all(image.shape == (20, 24, 3) for image, _ in pairs)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PSLError, match="no such directory"):
        data.load_images(f"folder:{tmp_path}/nope")
    with pytest.raises(PSLError, match="no images"):
        data.load_images(f"folder:{tmp_path}")


def test_training_pipeline_is_seeded_and_batched(synthetic_source):
    def preprocess(image, label, seed):
        import tensorflow as tf
        noise = tf.random.stateless_uniform([], tf.cast(seed, tf.int64))
        return tf.cast(image, tf.float32) / 255.0 + noise, seed[1]

    def epoch(seed):
        return [(x.copy(), y.copy()) for x, y in
                data.training_pipeline(synthetic_source, preprocess, 16, seed).as_numpy_iterator()]

    first, again, other = epoch(7), epoch(7), epoch(8)
    assert len(first) == 4 and first[0][0].shape == (16, 32, 32, 3)
    for (a, _), (b, _) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0][0], other[0][0])
