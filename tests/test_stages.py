import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras import stages
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.errors import PSLError
from psl_keras.tasks import build_task

from conftest import synthetic_images


def test_default_plan_is_three_overlapping_windows_of_three():
    plan = stages.stage_plan("psl", 3)
    assert [s.trained_blocks for s in plan] == [("B1", "B2", "B3"), ("B2", "B3", "B4"), ("B3", "B4", "B5")]
    assert [s.level for s in plan] == [1, 2, 3]
    assert all(s.restrict_gradient for s in plan)


def test_modes():
    assert [s.level for s in stages.stage_plan("sl", 3)] == [3, 3, 3]
    psl_f = stages.stage_plan("psl_f", 3)
    assert [s.trained_blocks for s in psl_f] == [("B1", "B2", "B3"), ("B1", "B2", "B3", "B4"),
                                                 ("B1", "B2", "B3", "B4", "B5")]
    assert [s.level for s in psl_f] == [1, 2, 3] and not any(s.restrict_gradient for s in psl_f)
    (e2e,) = stages.stage_plan("e2e", 3)
    assert e2e.trained_blocks == ("B1", "B2", "B3", "B4", "B5") and e2e.level == 3


def test_bad_windows_and_modes_are_clear_errors():
    with pytest.raises(PSLError, match="stage_windows"):
        stages.parse_windows("1-3,x")
    with pytest.raises(PSLError, match="within B1..B5"):
        stages.parse_windows("1-3,2-6")
    with pytest.raises(PSLError, match="3 windows"):
        stages.stage_plan("psl", 3, ((1, 3), (3, 5)))
    with pytest.raises(PSLError, match="Unknown mode"):
        stages.stage_plan("greedy", 3)


def _snapshot(layer):
    return [keras.ops.convert_to_numpy(w) for w in layer.weights]


def _changed(before, layer):
    return any(not np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, layer.weights))


def _train_stage(mode, stage_index, steps=2, sync_bn=False):
    keras.utils.set_random_seed(1)
    backbone = build_backbone("resnet18", 32, width=0.125, sync_bn=sync_bn)
    blocks = backbone_blocks(backbone)
    task = build_task("rotation", 32, head_hidden=16)
    stage = stages.stage_plan(mode, 3)[stage_index - 1]
    head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name="g")
    model = stages.StageModel(blocks, stage, head, task, global_batch_size=8, weight_decay=5e-4)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    model.optimizer.build(model.stage_variables)
    before = {b.name: _snapshot(b) for b in blocks + [head]}
    images = synthetic_images(8)
    batch = [task.preprocess(tf.constant(img), tf.constant([0, i], tf.int64), stage.level)
             for i, img in enumerate(images)]
    inputs = tf.stack([b[0] for b in batch])
    labels = tf.stack([b[1] for b in batch])
    step = tf.function(model.train_step)
    for _ in range(steps):
        result = step((inputs, labels))
    assert float(result["count"]) == 8 and np.isfinite(float(result["loss"]))
    return {b.name: _changed(before[b.name], b) for b in blocks + [head]}


def test_psl_stage2_leaves_blocks_outside_the_window_bit_identical():
    changed = _train_stage("psl", 2)
    # B1 runs forward only (BN frozen, stop-gradient), B5 is not run: weights and BN statistics untouched.
    assert not changed["B1"] and not changed["B5"]
    assert changed["B2"] and changed["B3"] and changed["B4"] and changed["g"]


def test_psl_f_stage2_trains_block1_too():
    changed = _train_stage("psl_f", 2)
    assert changed["B1"] and changed["B2"] and changed["B4"] and changed["g"]
    assert not changed["B5"]


def test_frozen_blocks_see_no_gradient():
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet18", 32, width=0.125)
    blocks = backbone_blocks(backbone)
    task = build_task("rotation", 32, head_hidden=8)
    stage = stages.stage_plan("psl", 3)[2]
    head = task.build_head(3, blocks[4].output.shape[-1], name="g3")
    model = stages.StageModel(blocks, stage, head, task, global_batch_size=4)
    x = tf.random.uniform((4, 32, 32, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True))
    frozen = blocks[0].trainable_variables + blocks[1].trainable_variables
    assert all(g is None for g in tape.gradient(loss, frozen))
    assert {id(v) for v in model.stage_variables} == {
        id(v) for layer in blocks[2:] + [head] for v in layer.trainable_variables
    }
