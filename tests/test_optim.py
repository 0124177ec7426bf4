"""Invariant: every stage gets its own optimizer and schedule, and the schedules have their known values.

The per-stage reset is checked end to end in test_training.py (`log.csv` learning rates); here the
schedules themselves are compared with values worked out by hand.
"""

import keras
import numpy as np
import pytest

from psl_keras import optim
from psl_keras.errors import PSLError


def _lr(schedule, step):
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_step_schedule_drops_tenfold_on_the_scaled_pattern():
    # The paper's 20/20/10/10 epochs scaled to a 60-step stage: drops after steps 20, 40 and 50.
    schedule = optim.learning_rate_schedule("step", 0.01, 60, pattern=(20, 20, 10, 10))
    expected = {0: 0.01, 20: 0.01, 21: 1e-3, 40: 1e-3, 41: 1e-4, 50: 1e-4, 51: 1e-5, 59: 1e-5}
    for step, lr in expected.items():
        assert _lr(schedule, step) == pytest.approx(lr, rel=1e-6), step
    assert optim.step_boundaries(600, (20, 20, 10, 10)) == [200, 400, 500]
    assert optim.step_boundaries(6, (2, 1, 1)) == [3, 4]


def test_cosine_schedule_reaches_zero_at_the_end_of_the_stage_and_warms_up_linearly():
    cosine = optim.learning_rate_schedule("cosine", 0.2, 100)
    assert _lr(cosine, 0) == pytest.approx(0.2)
    assert _lr(cosine, 50) == pytest.approx(0.1, rel=1e-5)  # (1 + cos(pi/2)) / 2 = 1/2
    assert _lr(cosine, 100) == pytest.approx(0.0, abs=1e-7)
    warm = optim.learning_rate_schedule("cosine", 0.2, 100, warmup_steps=10)
    assert _lr(warm, 0) == pytest.approx(0.0, abs=1e-7)
    assert _lr(warm, 5) == pytest.approx(0.1, rel=1e-5)
    assert _lr(warm, 10) == pytest.approx(0.2, rel=1e-5)
    assert _lr(warm, 55) == pytest.approx(0.1, rel=1e-5)  # half way through the 90 decay steps
    assert _lr(warm, 100) == pytest.approx(0.0, abs=1e-7)
    assert optim.learning_rate_schedule("constant", 0.3, 100) == 0.3


def test_optimizer_takes_momentum_and_nesterov():
    sgd = optim.build_optimizer("sgd", 0.1, momentum=0.8, nesterov=True)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.8 and sgd.nesterov is True
    assert optim.build_optimizer("sgd", 0.1, momentum=0.9, nesterov=False).nesterov is False
    # The optimizer applies the schedule: the rate it reports follows its own step counter.
    schedule = optim.learning_rate_schedule("step", 1.0, 4, pattern=(1, 1))
    sgd = optim.build_optimizer("sgd", schedule)
    variable = keras.Variable(np.zeros(2, "float32"))
    sgd.build([variable])
    rates = []
    for _ in range(4):
        rates.append(optim.current_learning_rate(sgd))
        sgd.apply_gradients([(keras.ops.ones(2), variable)])
    assert rates == pytest.approx([1.0, 1.0, 1.0, 0.1])


def test_bad_schedule_settings_are_clear_errors():
    with pytest.raises(PSLError, match="schedule_pattern"):
        optim.parse_pattern("20,x")
    with pytest.raises(PSLError, match="schedule_pattern"):
        optim.parse_pattern("20,0")
    with pytest.raises(PSLError, match="Unknown schedule"):
        optim.learning_rate_schedule("linear", 0.1, 10)
    with pytest.raises(PSLError, match="Unknown optimizer"):
        optim.build_optimizer("adam", 0.1)


def test_lars_scales_kernel_steps_by_the_trust_ratio_and_leaves_vectors_plain():
    lars = optim.build_optimizer("lars", 0.5, momentum=0.9)
    assert isinstance(lars, optim.LARS) and lars.eeta == 0.001
    kernel = keras.Variable(np.array([[3.0, 4.0]], "float32"))  # |w| = 5
    bias = keras.Variable(np.array([1.0, -1.0], "float32"))
    lars.build([kernel, bias])
    g_kernel = np.array([[0.03, -0.04]], "float32")  # |g| = 0.05 -> trust ratio 0.001 * 5 / 0.05 = 0.1
    g_bias = np.array([0.2, 0.4], "float32")
    lars.apply_gradients([(keras.ops.convert_to_tensor(g_kernel), kernel), (keras.ops.convert_to_tensor(g_bias), bias)])
    v_kernel = 0.5 * 0.1 * g_kernel  # v = momentum * 0 + lr * ratio * g
    v_bias = 0.5 * g_bias  # no adaptation for rank-1 variables
    np.testing.assert_allclose(kernel.numpy(), [[3.0, 4.0]] - v_kernel, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [1.0, -1.0] - v_bias, rtol=1e-6)
    # Second step: momentum carries the first velocity; the ratio uses the new weight norm.
    w = kernel.numpy()
    ratio = 0.001 * np.linalg.norm(w) / np.linalg.norm(g_kernel)
    lars.apply_gradients([(keras.ops.convert_to_tensor(g_kernel), kernel), (keras.ops.convert_to_tensor(g_bias), bias)])
    np.testing.assert_allclose(kernel.numpy(), w - (0.9 * v_kernel + 0.5 * ratio * g_kernel), rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), [1.0, -1.0] - v_bias - (0.9 * v_bias + 0.5 * g_bias), rtol=1e-6)
    # A zero gradient (or weight) keeps the ratio at 1 instead of dividing by zero.
    zero = keras.Variable(np.zeros((2, 2), "float32"))
    lars2 = optim.LARS(0.1)
    lars2.build([zero])
    lars2.apply_gradients([(keras.ops.ones((2, 2)), zero)])
    np.testing.assert_allclose(zero.numpy(), -0.1 * np.ones((2, 2)), rtol=1e-6)
