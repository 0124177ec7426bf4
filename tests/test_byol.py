"""BYOL with PSL: the loss against numpy, each prediction aimed at the other view's target, the target network
(projection only, no gradient, momentum rule, batch statistics), and runs under TensorFlow and under JAX."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import interrupt_after_batches, synthetic_images, tiny_config, two_view_stage
from psl_keras.data import ImageSource
from psl_keras.tasks.byol import byol_loss
from psl_keras.training.trainer import Trainer


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_byol_loss_equals_numpy_and_aims_each_prediction_at_the_other_view():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))  # 4 images, views at rows 2k and 2k + 1
    losses, correct = byol_loss(tf.constant(p, tf.float32), tf.constant(z, tf.float32))
    pn, zn = _unit(p), _unit(z)
    expected = [np.sum((pn[2 * k] - zn[2 * k + 1]) ** 2) + np.sum((pn[2 * k + 1] - zn[2 * k]) ** 2) for k in range(4)]
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5)
    nearest = (pn[0::2] @ zn[1::2].T).argmax(axis=1) == np.arange(4)
    np.testing.assert_array_equal(correct.numpy(), nearest.astype(np.float32))
    # Predictions equal to the other view's targets cost nothing; equal to their own view's, they do.
    swapped = z.reshape(4, 2, 5)[:, ::-1].reshape(8, 5)
    assert np.abs(byol_loss(tf.constant(swapped, tf.float32), tf.constant(z, tf.float32))[0].numpy()).max() < 1e-5
    assert byol_loss(tf.constant(z, tf.float32), tf.constant(z, tf.float32))[0].numpy().min() > 1e-2


def byol_stage(batch=8, momentum=0.9):
    return two_view_stage("byol", {"momentum": momentum, "projection_dim": 8}, batch, head_name="g2")


def test_the_target_is_a_momentum_copy_of_the_projection_without_gradient_on_batch_statistics():
    task, model, batch = byol_stage(momentum=0.9)
    target = model.task_state
    # Online: projection then predictor; target: the projection only (the head's output is the prediction).
    assert model.head.output.shape[-1] == 8 and target.key_head.output.shape[-1] == 8
    assert [layer.name for layer in target.query_layers[-1].layers][-1] == "g2_projection"
    assert "g2_prediction" in [layer.name for layer in model.head.layers]
    pairs = target.weight_pairs()
    for k, q in pairs:
        np.testing.assert_array_equal(k.numpy(), q.numpy())
    assert not {id(k) for k, _ in pairs} & {id(v) for v in model.stage_variables}
    features = model.frozen_features(batch[0])
    together = target.keys(features).numpy()
    alone = np.concatenate([target.keys(features[i:i + 1]).numpy() for i in range(4)])
    assert np.abs(together[:4] - alone).max() > 1e-2  # batch statistics
    with tf.GradientTape() as tape:
        outputs = task.stage_outputs(model, features, training=True)
        loss = tf.reduce_sum(task.objective(batch[1], outputs)[0])
    assert all(g is None for g in tape.gradient(loss, [k for k, _ in pairs]))

    before = [k.numpy() for k, _ in pairs]
    tf.function(model.train_step)(batch)
    moved = 0
    for key_before, (k, q) in zip(before, pairs):
        if q.trainable:
            np.testing.assert_allclose(k.numpy(), 0.9 * key_before + 0.1 * q.numpy(), rtol=1e-5, atol=1e-7)
            moved += not np.allclose(q.numpy(), key_before)
    assert moved > 10 and int(target.steps.numpy()) == 1


def test_byol_trains_every_stage_and_resumes_to_the_same_target(tmp_path):
    source = ImageSource.from_arrays("synthetic", synthetic_images(64), np.arange(64) % 4)
    overrides = dict(task="byol", mode="e2e", e2e_epochs=2, steps_per_epoch=3, task_options={"momentum": 0.9})

    class Keep(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.final = [k.numpy() for k, _ in self.model.task_state.weight_pairs()]

    keep_straight = Keep()
    straight = Trainer(tiny_config(tmp_path / "a", **overrides), source=source, callbacks=[keep_straight], verbose=0)
    summary = straight.train()
    assert np.isfinite(summary["stages"][0]["final_loss"])

    config = tiny_config(tmp_path / "b", **overrides)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, source=source, callbacks=[interrupt_after_batches(4)], verbose=0).train()  # in epoch 2
    keep_resumed = Keep()
    Trainer(config, resume=True, source=source, callbacks=[keep_resumed], verbose=0).train()
    for a, b in zip(straight.backbone.weights, keras.saving.load_model(
            os.path.join(config.output_dir, "backbone.keras"), safe_mode=True).weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    for a, b in zip(keep_straight.final, keep_resumed.final):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # psl: three stages, each its own head and target.
    summary = Trainer(tiny_config(tmp_path / "psl", task="byol"), source=source, verbose=0).train()
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]


def test_byol_trains_under_jax_without_tensorflow_and_a_killed_run_resumes_to_the_same_result(tmp_path):
    from psl_keras.data.arrays import save_arrays
    from test_jax import load_weights, train_without_tf

    data = str(tmp_path / "train.npz")
    save_arrays(data, synthetic_images(64, 32, seed=3), np.arange(64) % 4, "synthetic", "train", num_classes=4)
    flags = ["--task", "byol", "--byol_projection_dim", "32", "--dataset", f"arrays:{data}", "--mode", "e2e",
             "--e2e_epochs", "2"]  # one stage of 4 steps: one compilation per process
    unbroken, killed = str(tmp_path / "unbroken"), str(tmp_path / "killed")
    train_without_tf([*flags, "--output_dir", unbroken])
    result = train_without_tf([*flags, "--output_dir", killed], check=False, PSL_KERAS_KILL_AT="after_checkpoint:3")
    assert result.returncode == -9, result.stderr[-2000:]
    train_without_tf([*flags, "--output_dir", killed, "--resume"])
    assert all(np.array_equal(a, b) for a, b in zip(load_weights(os.path.join(unbroken, "backbone.keras")),
                                                    load_weights(os.path.join(killed, "backbone.keras"))))
    summary = json.load(open(os.path.join(unbroken, "summary.json")))
    assert summary["config"]["task"] == "byol" and [s["stage"] for s in summary["stages"]] == [1]
    with np.load(os.path.join(unbroken, "checkpoints", "ckpt-4.npz")) as last:
        assert [int(last[k]) for k in last.files if k.startswith("task_state/") and last[k].shape == ()] == [4]
