import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras.tasks import build_task
from psl_keras.data import transforms
from psl_keras.tasks.rotation import rotation_angles, rotation_transform

from conftest import synthetic_images


def test_levels_are_nested_multiples():
    assert rotation_angles(1) == [0, 180]
    assert rotation_angles(2) == [0, 90, 180, 270]
    assert rotation_angles(3) == [45 * k for k in range(8)]
    assert set(rotation_angles(1)) <= set(rotation_angles(2)) <= set(rotation_angles(3))
    task = build_task("rotation", 32)
    assert [task.num_classes(level) for level in (1, 2, 3)] == [2, 4, 8]


def rotate_one(task, image, label, level, flip, offset=(0.0, 0.0)):
    """The task's rotation of one image (uint8 or float [H, W, 3]) with chosen label, flip and crop offset."""
    return task.rotate(tf.constant(image)[None], tf.constant([label]), level, tf.constant([flip]),
                       tf.constant([offset], tf.float32))[0].numpy()


def test_transform_rotates_counter_clockwise_like_rot90_and_flips():
    image = np.random.default_rng(0).uniform(size=(1, 9, 9, 3)).astype("float32")

    def resample(angle, flip):
        transform = rotation_transform(tf.constant([angle]), tf.constant([flip]), 9.0, tf.zeros([1, 2]), (9, 9), 9)
        return keras.ops.image.affine_transform(tf.constant(image), transform, fill_mode="constant").numpy()[0]

    for quarter_turns in range(4):
        np.testing.assert_allclose(resample(quarter_turns * math.pi / 2, 0.0), np.rot90(image[0], quarter_turns),
                                   atol=1e-5)
    np.testing.assert_allclose(resample(0.0, 1.0), image[0, :, ::-1])


@pytest.mark.parametrize("image_size,source", [(32, (32, 32)), (64, (80, 120))])
def test_no_padded_corners_for_any_angle(image_size, source):
    """Every output pixel is read from inside the image (bilinear neighbours included), never from the fill."""
    task = build_task("rotation", image_size, options={"crop_fraction": 0.9 if image_size == 64 else 0})
    h, w = transforms.scaled_shape(source, task.resize_shorter) if task.resize_shorter else source
    inscribed = min(h, w) / math.sqrt(2)
    window = inscribed * task.crop_fraction
    rng = np.random.default_rng(0)
    for label in range(8):
        offsets = np.concatenate([[[-1, -1], [1, 1], [-1, 1], [1, -1]], rng.uniform(-1, 1, (4, 2))])
        offsets = offsets * (inscribed - window) / 2
        transform = rotation_transform(tf.fill([8], label * math.pi / 4), tf.constant([0.0, 1.0] * 4), window,
                                       tf.constant(offsets, tf.float32), (h, w), image_size).numpy()
        # The map is affine: the output's corners bound where it reads.
        u, v = np.meshgrid([0, image_size - 1], [0, image_size - 1])
        xs = transform[:, 0, None, None] * u + transform[:, 1, None, None] * v + transform[:, 2, None, None]
        ys = transform[:, 3, None, None] * u + transform[:, 4, None, None] * v + transform[:, 5, None, None]
        assert ys.min() >= 0 and ys.max() <= h - 1, f"label {label}"
        assert xs.min() >= 0 and xs.max() <= w - 1, f"label {label}"


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
    image = synthetic_images(1, seed=5)[0]
    zero = rotate_one(task, image, 0, 2, 0)
    for label in range(4):
        rotated = rotate_one(task, image, label, 2, 0)
        np.testing.assert_allclose(np.rot90(rotated, -label), zero, atol=2e-3)


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
    upright = [rotate_one(task, image, 0, level, flip) for flip in (0, 1)]
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
            views = [rotate_one(task, image, label, level, flip) for flip in (0, 1)]
            assert min(np.abs(out - v).max() for v in views) < 1e-5, (level, label)
    assert labels == set(range(task.num_classes(level)))
