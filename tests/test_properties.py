"""Property tests (hypothesis): any image a user can hand over -- 1x1 to large, 1/3/4 channels, uint8/uint16/
float -- goes through every task's preprocessing and every evaluation view with the documented shape, dtype and
range, and never a NaN."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from psl_keras.evaluation.preprocessing import center_view, train_view
from psl_keras.data.images import as_rgb_uint8
from psl_keras.tasks import build_task

# Eager TensorFlow costs ~10-100 ms per example: few examples, no deadline. Hypothesis still searches the
# corners (1-pixel sides, extreme aspect ratios, NaN/inf floats, all-zero and all-max images).
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.data_too_large])


@st.composite
def any_image(draw, max_side=160):
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]))
    shape = (height, width) if channels is None else (height, width, channels)
    if dtype in (np.float32, np.float64):
        elements = st.floats(-2.0, 2.0, width=32) | st.sampled_from([float("nan"), float("inf"), -float("inf")])
    else:
        elements = st.integers(0, np.iinfo(dtype).max)
    return draw(arrays(dtype, shape, elements=elements, fill=elements))


def finite_in(array, low, high):
    array = np.asarray(array)
    return bool(np.all(np.isfinite(array)) and array.min() >= low - 1e-6 and array.max() <= high + 1e-6)


@SETTINGS
@given(image=any_image())
def test_any_array_becomes_rgb_uint8_of_the_same_size(image):
    rgb = as_rgb_uint8(image)
    assert rgb.dtype == np.uint8 and rgb.shape == image.shape[:2] + (3,)


TASKS = {name: build_task(name, 32, head_hidden=8, options=options) for name, options in [
    ("rotation", {}), ("jigsaw", {"set_sizes": "4,8,16"}), ("simclr", {}), ("mocov2", {"queue_size": 64})]}


SHAPES = {"rotation": (32, 32, 3), "jigsaw": (9, TASKS["jigsaw"].tile_size, TASKS["jigsaw"].tile_size, 3),
          "simclr": (2, 32, 32, 3), "mocov2": (2, 32, 32, 3)}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_preprocesses_any_image(name):
    task = TASKS[name]

    @SETTINGS
    @given(image=any_image(), level=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
    def check(image, level, seed):
        # make_example: preprocess, plus the batch part of the contrastive ladders, as the model sees it
        inputs, label = task.make_example(tf.constant(as_rgb_uint8(image)), tf.constant([seed, 7], tf.int64), level)
        inputs = np.asarray(inputs)
        assert inputs.dtype == np.float32 and inputs.shape == SHAPES[name]
        if name == "jigsaw":
            assert np.all(np.isfinite(inputs))  # tiles are standardised one by one: any sign
        else:
            assert finite_in(inputs, 0.0, 1.0)
        if task.has_labels:
            assert 0 <= int(label) < task.num_classes(level)

    check()


@SETTINGS
@given(image=any_image(max_side=300), size=st.sampled_from([32, 64, 224]), seed=st.integers(0, 2**31 - 1))
def test_evaluation_views_of_any_image(image, size, seed):
    rgb = tf.constant(as_rgb_uint8(image))
    for view in (center_view(rgb, size), train_view(rgb, tf.constant([seed, 1], tf.int64), size)):
        view = np.asarray(view)
        assert view.shape == (size, size, 3) and view.dtype == np.float32 and finite_in(view, 0.0, 1.0)
