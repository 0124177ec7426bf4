import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from psl_keras.backbones import BLOCK_NAMES, backbone_blocks, build_backbone
from psl_keras.backbones.revnet import ReversibleBottleneck, ReversibleSequence

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))
import revnet_checks  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("training", [False, True])
def test_reversible_unit_reconstructs_its_input(training):
    keras.utils.set_random_seed(0)
    unit = ReversibleBottleneck(16, 8)
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 16)).astype("float32")
    y = unit(x, training=training)
    assert not np.allclose(keras.ops.convert_to_numpy(y), x)
    reconstructed = keras.ops.convert_to_numpy(unit.inverse(y, training=training))
    np.testing.assert_allclose(reconstructed, x, atol=1e-5)


def test_revnet50_layout_and_parameter_count():
    backbone = build_backbone("revnet50", 224)
    # Inner width C/5 in F and G: 24.4M parameters, the paper's Table 4 says 24M.
    assert backbone.count_params() == 24_438_822
    shapes = {k: tuple(v.shape[1:]) for k, v in backbone(np.zeros((1, 224, 224, 3), "float32")).items()}
    assert shapes == {"B1": (112, 112, 64), "B2": (56, 56, 256), "B3": (28, 28, 512),
                      "B4": (14, 14, 1024), "B5": (7, 7, 2048)}
    groups = [l for b in backbone_blocks(backbone) for l in b.layers if isinstance(l, ReversibleSequence)]
    assert [g.depth for g in groups] == [2, 3, 5, 2]  # all but the down-sampling unit of each [3, 4, 6, 3] group
    assert all(g.recompute for g in groups)  # the memory-saving backward pass is the default
    assert all(isinstance(u, ReversibleBottleneck) for g in groups for u in g.units)


def test_revnet_width_and_saving_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("revnet50", 32, width=0.125)
    path = str(tmp_path / "revnet.keras")
    backbone.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("float32")
    for name in BLOCK_NAMES:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(backbone(x)[name]),
                                   keras.ops.convert_to_numpy(loaded(x)[name]), atol=1e-5)
    wide = build_backbone("revnet50", 32, width=4 * 0.125)
    assert wide.count_params() > 3 * backbone.count_params()


def _check_gradients(result, exact=True):
    for stage, errors in result.items():
        if exact:  # in float64 the recomputing backward pass is ordinary backprop, to rounding
            assert errors["exact"] < 1e-9, (stage, errors)
        # In float32 it differs from ordinary backprop by less than ordinary backprop differs from itself on the
        # same batch in another order: within float32 rounding (which this deep, small-batch model amplifies).
        assert errors["float32"] < errors["reordered"], (stage, errors)
        assert errors["statistics_moved"] and errors["statistics_error"] < 1e-6, (stage, errors)
        assert not errors["frozen_gradient"], (stage, errors)  # PSL's stop-gradient holds with recomputation


def test_recomputed_gradients_equal_ordinary_backprop_at_64_px():
    # Measured: float64 5e-13 (S3) and 7e-13 (E2E); float32 0.7% and 0.1% against 7% and 11% from reordering.
    _check_gradients(revnet_checks.gradient_errors(64))


def test_recomputed_gradients_equal_ordinary_backprop_at_224_px():
    # Measured: float64 1.4e-12; float32 0.04% against 17% from reordering.
    _check_gradients(revnet_checks.gradient_errors(224, stage_names=("e2e1",)))


def _run_helper(*arguments, **env):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers", "revnet_checks.py"), *arguments],
                            capture_output=True, text=True, timeout=600, cwd=REPO,
                            env=dict(os.environ, KERAS_BACKEND="jax", **env))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_recomputed_gradients_equal_ordinary_backprop_under_jax():
    # Keras's JAX BatchNorm takes its moments in float32 even in a float64 model, so float32 is compared with
    # reordering only (batch 16: 0.4% against 2.9%).
    result = _run_helper("gradients", "64", "psl3", REVNET_DTYPES="float32", REVNET_BATCH="16")
    _check_gradients(result, exact=False)


def test_reversible_activation_memory_does_not_grow_with_depth():
    # XLA's memory analysis of the compiled backward pass of 2 and 8 reversible units (8 x 32 x 32 x 64):
    # measured 11.0 MiB for both with recomputation, 20.5 -> 68.5 MiB storing activations.
    memory = _run_helper("memory", "2,8")
    assert memory["8,True"] <= 1.1 * memory["2,True"]
    assert memory["8,False"] >= 2.5 * memory["2,False"]
    assert memory["8,True"] < memory["8,False"] / 4


def test_under_mixed_precision_the_residual_stream_stays_float32_and_recomputation_matches():
    # F and G compute in bfloat16, the sums in float32: the input is rebuilt exactly and the recomputed gradients
    # match stored backprop (measured: 0.02% over all weights; 14% before the stream was kept in float32).
    import tensorflow as tf

    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        sequence = ReversibleSequence(16, 8, 3)
        assert sequence.units[0].f[2].compute_dtype == "bfloat16"  # the convolutions run in bfloat16
    finally:
        keras.config.set_dtype_policy("float32")
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8, 8, 16)).astype("float32"))
    y = sequence(x, training=False)
    assert y.dtype == "float32"
    rebuilt = x
    for unit in sequence.units:
        rebuilt = unit(rebuilt, training=False)
    for unit in reversed(sequence.units):
        rebuilt = unit.inverse(rebuilt, training=False)
    np.testing.assert_allclose(rebuilt.numpy(), x.numpy(), atol=1e-5)
    gradients = {}
    for recompute in (False, True):
        sequence.recompute = recompute
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(sequence(x, training=True)))
        gradients[recompute] = np.concatenate([np.ravel(g) for g in tape.gradient(loss, sequence.trainable_weights)])
    difference = np.linalg.norm(gradients[True] - gradients[False]) / np.linalg.norm(gradients[False])
    assert difference < 1e-3
