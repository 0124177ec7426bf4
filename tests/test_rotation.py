import math

import numpy as np
import pytest
import tensorflow as tf

from psl_keras.tasks import build_task
from psl_keras.tasks.rotation import apply_transform, rotation_angles, rotation_crop_transform

from conftest import synthetic_images


def test_levels_are_nested_multiples():
    assert rotation_angles(1) == [0, 180]
    assert rotation_angles(2) == [0, 90, 180, 270]
    assert rotation_angles(3) == [45 * k for k in range(8)]
    assert set(rotation_angles(1)) <= set(rotation_angles(2)) <= set(rotation_angles(3))
    task = build_task("rotation", 32)
    assert [task.num_classes(level) for level in (1, 2, 3)] == [2, 4, 8]


def test_transform_rotates_counter_clockwise_like_rot90_and_flips():
    image = np.random.default_rng(0).uniform(size=(9, 9, 3)).astype("float32")
    for quarter_turns in range(4):
        angle = tf.constant(quarter_turns * math.pi / 2)
        t = rotation_crop_transform(angle, 9.0, 9.0, 9.0, tf.constant(9.0), tf.zeros(2), tf.constant(0.0))
        out = apply_transform(image, t, 9, fill_mode="CONSTANT").numpy()
        np.testing.assert_allclose(out, np.rot90(image, quarter_turns), atol=1e-5)
    t = rotation_crop_transform(tf.constant(0.0), 9.0, 9.0, 9.0, tf.constant(9.0), tf.zeros(2), tf.constant(1.0))
    np.testing.assert_allclose(apply_transform(image, t, 9, fill_mode="CONSTANT").numpy(), image[:, ::-1])


@pytest.mark.parametrize("image_size,source", [(32, (32, 32)), (64, (80, 120))])
def test_no_padded_corners_for_any_angle(image_size, source):
    """Every output pixel comes from inside the image: with zero fill, a white image stays white."""
    task = build_task("rotation", image_size, options={"crop_fraction": 0.9 if image_size == 64 else 0})
    white = tf.ones(source + (3,), tf.float32)
    rng = np.random.default_rng(0)
    for label in range(8):
        for _ in range(4):  # random crop positions and flips
            image = white
            if task.resize_shorter:
                from psl_keras.tasks.rotation import resize_shorter_side
                image = resize_shorter_side(image, task.resize_shorter)
            h, w = image.shape[0], image.shape[1]
            inscribed = min(h, w) / math.sqrt(2)
            window = inscribed * task.crop_fraction
            offset = rng.uniform(-1, 1, 2) * (inscribed - window) / 2
            t = rotation_crop_transform(
                tf.constant(label * math.pi / 4), float(h), float(w), float(image_size),
                tf.constant(window, tf.float32), tf.constant(offset, tf.float32),
                tf.constant(float(rng.integers(2))),
            )
            out = apply_transform(image, t, image_size, fill_mode="CONSTANT").numpy()
            assert out.shape == (image_size, image_size, 3)
            assert out.min() > 0.99, f"label {label}: a pixel was sampled outside the image"


def test_preprocess_outputs_every_label_in_range_and_is_deterministic():
    task = build_task("rotation", 32)
    image = tf.constant(synthetic_images(1)[0])
    labels = set()
    for i in range(64):
        seed = tf.constant([3, i], tf.int64)
        out, label = task.preprocess(image, seed, 3)
        again, label_again = task.preprocess(image, seed, 3)
        np.testing.assert_array_equal(out.numpy(), again.numpy())
        assert int(label) == int(label_again)
        assert out.shape == (32, 32, 3) and out.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
        labels.add(int(label))
    assert labels == set(range(8))


def test_label_is_the_rotation_applied():
    """Un-rotating the output by its label's angle gives back the un-rotated view of the same crop."""
    task = build_task("rotation", 32)
    image = tf.image.convert_image_dtype(tf.constant(synthetic_images(1, seed=5)[0]), tf.float32)
    zero = task.rotate(image, 0, 2, 0, tf.zeros(2))
    for label in range(4):
        rotated = task.rotate(image, label, 2, 0, tf.zeros(2)).numpy()
        np.testing.assert_allclose(np.rot90(rotated, -label), zero.numpy(), atol=2e-3)


def _disc_image(side, radius):
    """White inside a centred disc of `radius` pixels, black outside it."""
    centre = (side - 1) / 2
    y, x = np.mgrid[:side, :side]
    inside = np.hypot(y - centre, x - centre) <= radius
    return np.repeat(inside[..., None], 3, axis=-1).astype(np.uint8) * 255


@pytest.mark.parametrize("image_size,source_side", [(32, 32), (96, 110)])
def test_preprocessing_never_reads_outside_the_inscribed_disc(image_size, source_side):
    """Shortcut guard, through the task's own preprocessing: every angle of every level samples only
    pixels within the disc the rotated crops are inscribed in (plus bilinear reach), so neither black
    corners nor reflected borders can give the angle away. The corners of the source are black here:
    any output pixel below 1 means the crop reached them."""
    task = build_task("rotation", image_size)
    assert task.resize_shorter in (0, source_side)  # no resize: the disc stays where it is drawn
    image = tf.constant(_disc_image(source_side, source_side / 2 + 1.5))
    seen = set()
    for i in range(48):
        out, label = task.preprocess(image, tf.constant([11, i], tf.int64), 3)
        seen.add(int(label))
        assert float(tf.reduce_min(out)) > 0.99, f"label {int(label)}: the crop left the disc"
    assert seen == set(range(8))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_preprocessing_label_is_the_angle_applied(level):
    """Through `preprocess`: turning the output back by its label's angle gives the upright view of the same
    image (flipped or not); for 45-degree labels, the view equals the same crop rotated by that angle."""
    task = build_task("rotation", 32)
    image = tf.constant(synthetic_images(1, seed=7)[0])
    as_float = tf.image.convert_image_dtype(image, tf.float32)
    upright = [task.rotate(as_float, 0, level, flip, tf.zeros(2)).numpy() for flip in (0, 1)]
    labels = set()
    for i in range(40):
        out, label = task.preprocess(image, tf.constant([5, i], tf.int64), level)
        out, label = out.numpy(), int(label)
        labels.add(label)
        angle = rotation_angles(level)[label]
        if angle % 90 == 0:
            back = np.rot90(out, -int(angle // 90))
            assert min(np.abs(back - u).max() for u in upright) < 2e-3, (level, label)
        else:
            views = [np.clip(task.rotate(as_float, label, level, flip, tf.zeros(2)).numpy(), 0, 1)
                     for flip in (0, 1)]
            assert min(np.abs(out - v).max() for v in views) < 1e-5, (level, label)
    assert labels == set(range(task.num_classes(level)))


def test_batch_rotate_matches_the_per_example_pipeline():
    # The keras.ops batch path (Keras on JAX feeds it from device memory) has the tf.data path's geometry.
    from conftest import synthetic_images

    images = synthetic_images(8, 32, seed=1)
    rng = np.random.default_rng(0)
    for resample in ("bilinear", "smooth"):
        task = build_task("rotation", 32, options={"resample": resample})
        for level in (1, 2, 3):
            labels, flips = rng.integers(0, task.num_classes(level), 8), rng.integers(0, 2, 8)
            offsets = rng.uniform(-1, 1, (8, 2)).astype("float32")
            batch = np.asarray(task.batch_rotate(images, labels, level, flips, offsets))
            single = [np.clip(task.rotate(tf.image.convert_image_dtype(images[i], tf.float32), labels[i], level,
                                          flips[i], tf.constant(offsets[i])), 0, 1) for i in range(8)]
            assert np.abs(batch - np.stack(single)).max() < 1e-5
