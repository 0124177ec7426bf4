import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from psl_keras import data
from psl_keras.errors import PSLError

from conftest import SHARED_TFDS, needs_cifar10, synthetic_images


def test_missing_dataset_names_data_dir_and_how_to_prepare(tmp_path):
    with pytest.raises(PSLError) as err:
        data.load_images("cifar10", str(tmp_path), "train")
    message = str(err.value)
    assert "not prepared" in message and f"--data_dir={tmp_path}" in message
    assert "download_and_prepare" in message


def test_a_failed_download_says_how_to_prepare_the_dataset_offline(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    attempts = []

    def no_network(self, *args, **kwargs):
        attempts.append(self.name)
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
    with pytest.raises(PSLError) as err:
        data.load_images("cifar10", str(tmp_path), "train", download=True, verbose=False)
    message = str(err.value)
    assert attempts == ["cifar10"]  # it did try, as TFDS users expect
    assert "downloading it failed (ConnectionError: Failed to establish" in message
    assert f"--data_dir={tmp_path}" in message and "download_and_prepare" in message


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
    # TFDS slicing: the first examples of a split, in the split's order
    head = data.load_images("cifar10", SHARED_TFDS, "test[:300]")
    assert head.num_examples == 300 and np.array_equal(head.arrays[0], images[:300])
    with pytest.raises(PSLError, match=r"no split 'test\[:abc\]'"):
        data.load_images("cifar10", SHARED_TFDS, "test[:abc]")


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
    source = data.load_images(f"folder:{tmp_path}", verbose=False)
    assert source.num_classes == 2 and source.num_examples == 6  # counted without the unreadable file
    assert list(source.unreadable) == [os.path.join("dog", "broken.jpg")]
    pairs = list(source.as_dataset().as_numpy_iterator())
    assert len(pairs) == 6  # the corrupt file is left out, not a crash
    assert sorted(int(label) for _, label in pairs) == [0, 0, 0, 1, 1, 1]
    assert all(image.shape == (20, 24, 3) for image, _ in pairs)


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PSLError, match="no such directory"):
        data.load_images(f"folder:{tmp_path}/nope")
    with pytest.raises(PSLError, match="no images"):
        data.load_images(f"folder:{tmp_path}")


def _indexed_source(count, streaming=False):
    """A source whose label is the example's index, so a pipeline's output reveals its order."""
    source = data.ImageSource.from_arrays("indexed", np.zeros((count, 4, 4, 3), np.uint8), np.arange(count))
    if streaming:
        import tensorflow as tf
        source = dataclasses.replace(source, dataset=tf.data.Dataset.from_tensor_slices(source.arrays),
                                     arrays=None)
    return source


def _epoch(source, seed, batch_size=16, **kwargs):
    """(example order, per-example seeds) of one epoch of the training pipeline."""
    batches = list(data.training_pipeline(source, lambda image, label, s: (label, s), batch_size, seed, **kwargs)
                   .as_numpy_iterator())
    if not batches:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


@pytest.mark.parametrize("streaming", [False, True])
def test_every_epoch_is_a_seeded_permutation_with_distinct_example_seeds(streaming):
    source = _indexed_source(64, streaming)
    order, seeds = _epoch(source, seed=7)
    assert sorted(order.tolist()) == list(range(64))  # every example exactly once
    again, seeds_again = _epoch(source, seed=7)
    np.testing.assert_array_equal(order, again)
    np.testing.assert_array_equal(seeds, seeds_again)
    other, other_seeds = _epoch(source, seed=8)
    assert not np.array_equal(order, other)  # the order itself depends on the seed
    assert not np.array_equal(order, np.arange(64))
    assert len({tuple(s) for s in seeds}) == 64  # every example draws its own augmentation
    assert not {tuple(s) for s in seeds} & {tuple(s) for s in other_seeds}


def test_batches_are_always_full():
    # The loss is divided by the global batch size, so a short last batch would be under-weighted.
    order, _ = _epoch(_indexed_source(70), seed=0)
    assert len(order) == 64
    batches = list(data.training_pipeline(_indexed_source(70), lambda i, l, s: (l, s), 16, 0).as_numpy_iterator())
    assert [len(b[0]) for b in batches] == [16] * 4


def test_input_pipelines_read_disjoint_shards_with_their_own_seeds():
    import tensorflow as tf

    source = _indexed_source(64)
    shards = [_epoch(source, 3, input_context=tf.distribute.InputContext(2, i, 2)) for i in range(2)]
    (order0, seeds0), (order1, seeds1) = shards
    assert len(order0) == len(order1) == 32  # per-replica batches of 8 from a global batch of 16
    assert sorted(order0.tolist() + order1.tolist()) == list(range(64))
    assert not {tuple(s) for s in seeds0} & {tuple(s) for s in seeds1}


def test_skipping_steps_continues_exactly_where_an_epoch_stopped():
    source = _indexed_source(64)
    order, seeds = _epoch(source, seed=5)
    rest, rest_seeds = _epoch(source, seed=5, skip_steps=2)
    np.testing.assert_array_equal(rest, order[32:])
    np.testing.assert_array_equal(rest_seeds, seeds[32:])


@needs_cifar10
def test_a_streaming_tfds_shard_decodes_after_splitting_and_matches_the_old_shard(monkeypatch):
    monkeypatch.setattr(data, "IN_MEMORY_BYTES", 0)  # stream CIFAR-10 as ImageNet would
    source = data.load_images("cifar10", SHARED_TFDS, "test")
    assert source.arrays is None and source.encoded is not None
    new = list(source.shard(3, 1).take(6).as_numpy_iterator())
    old = list(source.dataset.shard(3, 1).take(6).as_numpy_iterator())
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(new, old))


def test_array_datasets_round_trip_exactly_and_compress(tmp_path):
    from psl_keras.data import arrays

    images = synthetic_images(40, size=16, seed=5)
    images[0, 0, 0] = [255, 0, 255]  # deltas that wrap around 0 / 255
    labels = np.arange(40) % 3
    path = str(tmp_path / "split.npz")
    arrays.save_arrays(path, images, labels, "synthetic", "train", 3, ("a", "b", "c"))
    loaded, loaded_labels, meta = arrays.load_arrays(path)
    assert np.array_equal(loaded, images) and np.array_equal(loaded_labels, labels)
    assert meta["class_names"] == ["a", "b", "c"] and meta["num_classes"] == 3
    assert os.path.getsize(path) < images.nbytes / 2  # smooth images: deltas are mostly zero
    (tmp_path / "bad.npz").write_bytes(b"not an array file")
    with pytest.raises(PSLError, match="not an array dataset"):
        arrays.load_arrays(str(tmp_path / "bad.npz"))
