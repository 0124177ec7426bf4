"""SimCLR with PSL: NT-Xent by hand and against numpy, negatives from every replica, the two-view pipeline, and
training runs through the task-agnostic trainer."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import synthetic_images, tiny_config
from psl_keras.data import ImageSource
from psl_keras.tasks import build_task
from psl_keras.tasks.simclr import nt_xent

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers", "replica_step.py")


def test_nt_xent_by_hand_on_two_images():
    # Rows 0,1 are the views of image 0 and rows 2,3 of image 1; unit vectors, temperature 1.
    z = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    loss, correct = nt_xent(tf.constant(z), 1.0)
    # Anchor 0: positive 0.6, negatives 0 and -1.   Anchor 1: positive 0.6, negatives 0.8 and -0.6.
    # Anchor 2: positive 0, negatives 0 and 0.8.     Anchor 3: positive 0, negatives -1 and -0.6.
    e = math.exp
    anchors = [
        -0.6 + math.log(e(0.6) + e(0.0) + e(-1.0)),
        -0.6 + math.log(e(0.6) + e(0.8) + e(-0.6)),
        -0.0 + math.log(e(0.0) + e(0.0) + e(0.8)),
        -0.0 + math.log(e(0.0) + e(-1.0) + e(-0.6)),
    ]
    np.testing.assert_allclose(loss.numpy(), [(anchors[0] + anchors[1]) / 2, (anchors[2] + anchors[3]) / 2],
                               rtol=1e-6)
    # Anchors 0 and 3 rank their partner first; anchors 1 and 2 prefer each other (0.8).
    np.testing.assert_allclose(correct.numpy(), [0.5, 0.5])


def numpy_nt_xent(z, temperature):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(len(z)):
        partner = i + 1 if i % 2 == 0 else i - 1
        others = [j for j in range(len(z)) if j != i]
        logits = np.array([z[i] @ z[j] for j in others]) / temperature
        losses.append(-(z[i] @ z[partner]) / temperature + np.log(np.exp(logits).sum()))
    return np.array(losses).reshape(-1, 2).mean(axis=1)


def test_nt_xent_equals_an_independent_numpy_formula():
    z = np.random.default_rng(0).normal(size=(12, 7)).astype(np.float32)
    loss, _ = nt_xent(tf.constant(z), 0.2)
    np.testing.assert_allclose(loss.numpy(), numpy_nt_xent(z.astype(np.float64), 0.2), rtol=1e-5)
    perfect, correct = nt_xent(tf.constant(np.repeat(np.eye(6, dtype=np.float32), 2, axis=0)), 0.1)
    assert np.all(correct.numpy() == 1.0) and np.all(perfect.numpy() < 1e-3)


def replica_step(**env):
    env = dict(os.environ, TASK="simclr", STEPS="1", **env)
    out = subprocess.run([sys.executable, HELPER, "1"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_replicas_give_the_one_replica_loss_and_update():
    # Global batch 16 split 8+8 over two logical CPUs: each replica's anchors see all 30 other embeddings,
    # so loss and update equal the single-device ones (synchronised BatchNorm, as SimCLR's global BN).
    result = replica_step()
    assert result["replicas"] == 2
    assert result["loss_diff"] < 1e-4 * result["losses"][0]
    assert result["max_abs_diff"] < 1e-5
    # With each replica's own rows as its only negatives the loss and update differ: the check can fail.
    assert result["local_loss_diff"] > 1.0 and result["local_max_abs_diff"] > 1e-3


def test_two_views_per_image_through_the_batch_step():
    task = build_task("simclr", 32)
    images = synthetic_images(4)
    examples = [task.preprocess(tf.constant(im), tf.constant([7, i], tf.int64), 3) for i, im in enumerate(images)]
    inputs = tf.nest.map_structure(lambda *t: tf.stack(t), *[e[0] for e in examples])
    labels = tf.stack([e[1] for e in examples])
    views, labels = task.batch_transform(3)(inputs, labels)
    assert views.shape == (4, 2, 32, 32, 3) and views.dtype == tf.float32
    assert np.all(labels.numpy() == 0)
    assert np.abs(views[:, 0].numpy() - views[:, 1].numpy()).reshape(4, -1).max(axis=1).min() > 0.05
    assert task.backbone_images(views).shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(task.backbone_images(views)[1], views[0, 1])
    one, _ = task.make_example(tf.constant(images[2]), tf.constant([7, 2], tf.int64), 3)
    np.testing.assert_allclose(one.numpy(), views[2].numpy(), atol=1e-6)  # the same views, one at a time


def test_options_defaults_and_config_round_trip():
    small, large = build_task("simclr", 32), build_task("simclr", 224)
    assert (small.temperature, small.strength) == (0.5, 0.5) and (large.temperature, large.strength) == (0.1, 1.0)
    task = build_task("simclr", 32, options={"temperature": 0.2, "projection_dim": 64, "sobel_rate": 0.0})
    rebuilt = type(task).from_config(task.get_config())
    assert rebuilt.get_config() == task.get_config() and rebuilt.projection_dim == 64
    from psl_keras.errors import PSLError

    with pytest.raises(PSLError, match="simclr"):
        build_task("simclr", 32, options={"blur_rate": 1.5})


def test_preset_uses_lars_at_the_scaled_learning_rate():
    from psl_keras.config import resolve_config

    cifar = resolve_config("cifar10_small", {"task": "simclr"})
    assert (cifar.optimizer, cifar.lr, cifar.batch_size) == ("lars", 0.3 * 512 / 256, 512)
    paper = resolve_config("imagenet_paper", {"task": "simclr"})
    assert (paper.optimizer, paper.lr, paper.batch_size, paper.stage_epochs) == ("lars", 0.3, 256, "60,70,70")
    assert paper.backbone == "resnet50" and paper.head_hidden == 2048


# sl and psl_f differ from psl only in the stage plan, which is task-agnostic (tests/test_stages.py).
@pytest.mark.parametrize("mode", ["psl", "e2e"])
def test_simclr_trains_with_per_stage_epochs(tmp_path, mode):
    from psl_keras.training.trainer import Trainer

    source = ImageSource.from_arrays("synthetic", synthetic_images(64), np.arange(64) % 4)
    config = tiny_config(tmp_path, task="simclr", mode=mode, optimizer="lars", lr=0.3, weight_decay=1e-6,
                         stage_epochs="1,2,1", knn_monitor=mode == "psl", knn_bank_size=32, knn_k=5)
    summary = Trainer(config, source=source, knn_source=source.head(32), verbose=0).train()
    stages = summary["stages"]
    levels = {"psl": [1, 2, 3], "e2e": [3]}[mode]
    assert [s["level"] for s in stages] == levels
    assert [s["epochs"] for s in stages] == {"psl": [1, 2, 1], "e2e": [4]}[mode]  # E2E: the stages' sum
    assert all(s["task_level"].startswith(f"simclr T{level}") for s, level in zip(stages, levels))
    # Batch 16 -> 32 views: chance of ranking the partner first is 1/31; the loss starts near log(31).
    assert all(np.isfinite(s["final_loss"]) and 0 < s["final_loss"] < 2 * math.log(31) for s in stages)
    if mode == "psl":
        assert all(0 <= s["knn_accuracy"] <= 1 for s in stages)
    assert summary["task"]["name"] == "simclr"


def test_stage_epochs_must_match_the_windows(tmp_path):
    from psl_keras.errors import PSLError
    from psl_keras.training.trainer import stage_epochs

    assert stage_epochs(tiny_config(tmp_path, stage_epochs="60,70,70")) == [60, 70, 70]
    assert stage_epochs(tiny_config(tmp_path, epochs_per_stage=5)) == [5, 5, 5]
    assert stage_epochs(tiny_config(tmp_path, mode="e2e", stage_epochs="60,70,70")) == [200]
    assert stage_epochs(tiny_config(tmp_path, mode="e2e", stage_epochs="60,70,70", e2e_epochs=90)) == [90]
    for bad in ("60,70", "60,x,70", "60,0,70"):
        with pytest.raises(PSLError, match="stage_epochs"):
            stage_epochs(tiny_config(tmp_path, stage_epochs=bad))
