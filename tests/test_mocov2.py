"""MoCo v2 with PSL: InfoNCE against numpy, the key encoder (no gradient, momentum rule), the FIFO queue, stage
boundaries, and a run interrupted mid-stage that resumes to the same weights and queue."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import interrupt_after_batches, synthetic_images, tiny_config, two_view_stage
from psl_keras.data import ImageSource
from psl_keras.errors import PSLError
from psl_keras.tasks.mocov2 import info_nce
from psl_keras.training.trainer import Trainer


def test_info_nce_equals_numpy():
    rng = np.random.default_rng(0)
    q, k, queue = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)), rng.normal(size=(7, 8))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    losses, correct = info_nce(tf.constant(q, tf.float32), tf.constant(k, tf.float32),
                               tf.constant(queue, tf.float32), 0.2)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    logits = np.concatenate([(qn * k).sum(1, keepdims=True), qn @ queue.T], axis=1) / 0.2
    expected = -logits[:, 0] + np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(losses.numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(correct.numpy(), (logits.argmax(axis=1) == 0).astype(np.float32))


def moco_stage(batch=8, queue_size=32, momentum=0.9, stage_index=1):
    return two_view_stage("mocov2", {"queue_size": queue_size, "momentum": momentum, "shuffle_groups": 2}, batch,
                          stage_index)


def test_key_encoder_gets_no_gradient_and_follows_the_momentum_rule():
    task, model, batch = moco_stage(momentum=0.9)
    state = model.task_state
    pairs = state.weight_pairs()
    assert pairs and all(k is not q for k, q in pairs)
    # Starts as a copy of the query encoder (the stage's trained blocks and head).
    for k, q in pairs:
        np.testing.assert_array_equal(k.numpy(), q.numpy())
    assert not any(k.trainable for k, _ in pairs)
    key_ids = {id(k) for k, _ in pairs}
    assert not key_ids & {id(v) for v in model.stage_variables}  # the optimizer never sees them
    with tf.GradientTape() as tape:
        features = model.frozen_features(batch[0])
        outputs = task.stage_outputs(model, features, training=True)
        loss = tf.reduce_sum(task.objective(batch[1], outputs)[0])
    gradients = tape.gradient(loss, [k for k, _ in pairs])
    assert all(g is None for g in gradients)

    before = [k.numpy() for k, _ in pairs]
    step = tf.function(model.train_step)
    step(batch)
    trained = [(b, k.numpy(), q.numpy(), q.trainable) for b, (k, q) in zip(before, pairs)]
    moved = 0
    for key_before, key_after, query_after, is_trained in trained:
        if is_trained:  # k <- 0.9 k + 0.1 q, with q after the optimizer step
            np.testing.assert_allclose(key_after, 0.9 * key_before + 0.1 * query_after, rtol=1e-5, atol=1e-7)
            moved += not np.allclose(query_after, key_before)
        else:  # BatchNorm moving statistics: the key encoder normalises with batch statistics
            assert key_after.shape == query_after.shape
    assert moved > 10  # the query encoder really changed, so the rule is tested on real updates


def test_a_querys_positive_is_the_key_of_the_other_view_of_the_same_image():
    task, model, (views, _) = moco_stage(batch=8)
    model.task_state.shuffle_groups = 1  # one BatchNorm group: keys then follow their images exactly

    def outputs(inputs):
        return task.stage_outputs(model, model.frozen_features(tf.constant(inputs)), training=True)

    views = views.numpy()
    base = outputs(views)
    other_first = views.copy()
    other_first[:, 0] = np.random.default_rng(1).uniform(size=other_first[:, 0].shape)
    changed = outputs(other_first)
    # Keys come from the second views only, queries from the first views only.
    np.testing.assert_array_equal(changed["keys"].numpy(), base["keys"].numpy())
    assert np.abs(changed["queries"].numpy() - base["queries"].numpy()).min(axis=1).max() > 0
    other_second = views.copy()
    other_second[:, 1] = other_first[:, 0]
    np.testing.assert_array_equal(outputs(other_second)["queries"].numpy(), base["queries"].numpy())
    # Row i's key is image i's: shuffling the images shuffles their keys the same way.
    order = np.random.default_rng(2).permutation(8)
    shuffled = outputs(views[order])
    np.testing.assert_allclose(shuffled["keys"].numpy(), base["keys"].numpy()[order], atol=1e-5)
    np.testing.assert_allclose(shuffled["queries"].numpy(), base["queries"].numpy()[order], atol=1e-5)


def test_keys_are_normalised_with_the_statistics_of_their_shuffled_group_only():
    """Shuffle BN: the key encoder uses batch statistics (a key depends on the images it is normalised with),
    over a random group of the replica's keys, never the whole batch its query is normalised with."""
    _, model, (views, _) = moco_stage(batch=8)
    state = model.task_state
    assert state.shuffle_groups == 2
    features = model.frozen_features(views)[1::2].numpy()
    keys = state.keys(tf.constant(features)).numpy()
    one_by_one = np.concatenate([state.keys(tf.constant(features[i:i + 1])).numpy() for i in range(8)])
    assert np.abs(keys - one_by_one).max() > 1e-2  # batch statistics, not the moving ones
    partners = []  # for each key, the images whose change moves it
    for j in range(8):
        moved = features.copy()
        moved[j] = moved[j] * 3.0 + 1.0
        partners.append(np.abs(state.keys(tf.constant(moved)).numpy() - keys).max(axis=1) > 1e-5)
    partners = np.array(partners).T  # partners[i, j]: image j shares key i's statistics
    assert np.all(np.diag(partners))
    assert np.all(partners.sum(axis=1) == 4)  # its group of 8 / 2 images, not the whole batch
    assert np.array_equal(partners, partners.T)  # groups: a partition of the batch
    assert not np.array_equal(partners[0], np.arange(8) < 4)  # shuffled groups, not the batch's halves


def test_queue_is_first_in_first_out_and_wraps_around():
    _, model, _ = moco_stage(batch=8, queue_size=20)
    state = model.task_state
    start = state.queue.numpy().copy()
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-5)  # random unit vectors
    batches = [np.full((8, start.shape[1]), float(i + 1), np.float32) for i in range(3)]
    state.update(tf.constant(batches[0]))
    queue = state.queue.numpy()
    np.testing.assert_array_equal(queue[:8], batches[0])
    np.testing.assert_array_equal(queue[8:], start[8:])
    state.update(tf.constant(batches[1]))
    state.update(tf.constant(batches[2]))  # 24 keys into 20 slots: the oldest four (batch 1's) go first
    queue = state.queue.numpy()
    np.testing.assert_array_equal(queue[16:20], batches[2][:4])
    np.testing.assert_array_equal(queue[:4], batches[2][4:])
    np.testing.assert_array_equal(queue[4:8], batches[0][4:])
    np.testing.assert_array_equal(queue[8:16], batches[1])
    assert int(state.queue_pointer.numpy()) == 4


def test_each_stage_starts_its_own_key_encoder_and_queue():
    _, first, _ = moco_stage(stage_index=0)
    _, second, _ = moco_stage(stage_index=1)
    assert first.task_state is not second.task_state
    # Stage 2's key encoder mirrors stage 2's window (B2..B4) and head, not stage 1's.
    assert [b.name for b in second.task_state.query_layers[:-1]] == [b.name for b in second.trained_blocks]
    assert second.task_state.key_head.output.shape[-1] == 128
    with pytest.raises(PSLError, match="queue_size"):
        moco_stage(batch=8, queue_size=4)


class KeepQueue(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        state = self.model.task_state
        self.final = [state.queue.numpy(), state.queue_pointer.numpy()] + [k.numpy() for k, _ in state.weight_pairs()]


def test_moco_run_interrupted_mid_stage_resumes_to_the_same_weights_and_queue(tmp_path):
    # One E2E stage of 6 steps, interrupted after 3 (the key encoder and queue then hold 3 steps of state).
    source = ImageSource.from_arrays("synthetic", synthetic_images(64), np.arange(64) % 4)
    overrides = dict(task="mocov2", mode="e2e", e2e_epochs=2, steps_per_epoch=3,
                     task_options={"queue_size": 32, "shuffle_groups": 2})
    keep_straight = KeepQueue()
    straight = Trainer(tiny_config(tmp_path / "a", **overrides), source=source, callbacks=[keep_straight], verbose=0)
    straight.train()

    config = tiny_config(tmp_path / "b", **overrides)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, source=source, callbacks=[interrupt_after_batches(4)], verbose=0).train()  # in epoch 2
    with open(os.path.join(config.output_dir, "state.json")) as f:
        state = json.load(f)
    assert (state["stage"], state["epoch"], state["step"]) == (1, 1, 1)
    keep_resumed = KeepQueue()
    resumed = Trainer(config, resume=True, source=source, callbacks=[keep_resumed], verbose=0)
    resumed.train()
    for a, b in zip(straight.backbone.weights, resumed.backbone.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert len(keep_straight.final) == len(keep_resumed.final) > 2
    assert int(keep_resumed.final[1]) == 6 * 16 % 32  # six batches of 16 keys went into the queue
    for a, b in zip(keep_straight.final, keep_resumed.final):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_two_replicas_keep_one_queue_filled_from_both():
    import subprocess
    import sys

    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "replica_step.py")
    env = dict(os.environ, TASK="mocov2", STEPS="2")
    out = subprocess.run([sys.executable, helper, "0"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Both replicas' copies of the queue, its pointer and the key encoder are identical, and each step
    # enqueued the keys of the whole global batch of 16 (gathered from both replicas).
    assert result["replicas"] == 2 and result["copies_equal"] is True
    assert result["queue_pointer"] == 2 * 16
