"""What every registered task promises the trainer and the demo, checked over the registry."""

import numpy as np
import pytest
import tensorflow as tf

from psl_keras.errors import PSLError
from psl_keras.tasks import TASKS, build_task

from conftest import synthetic_images

OPTIONS = {"jigsaw": {"set_sizes": "4,8,16", "tile_grayscale": 0.25}, "rotation": {"crop_fraction": 0.9}}


@pytest.fixture(autouse=True)
def _permutation_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_config_round_trips_through_the_constructor(name):
    task = build_task(name, 32, head_hidden=24, sync_bn=True, options=OPTIONS.get(name))
    config = task.get_config()
    rebuilt = TASKS[name].from_config(config)
    assert rebuilt.get_config() == config and config["name"] == name and config["sync_bn"] is True
    with pytest.raises(ValueError):
        TASKS[name].from_config({**config, "name": "another"})


@pytest.mark.parametrize("name", sorted(n for n in TASKS if TASKS[n].has_labels))
def test_make_example_with_a_chosen_label_is_preprocess_with_that_label(name):
    """The demo's examples: the same pipeline and seed as training, only the label fixed by the caller."""
    task = build_task(name, 32, options=OPTIONS.get(name))
    image = tf.constant(synthetic_images(1, seed=9)[0])
    seed = tf.constant([4, 2], tf.int64)
    inputs, label = task.preprocess(image, seed, task.num_levels)
    again, same = task.make_example(image, seed, task.num_levels, int(label))
    assert int(same) == int(label)
    np.testing.assert_array_equal(again.numpy(), inputs.numpy())
    other = (int(label) + 1) % task.num_classes(task.num_levels)
    changed, other_label = task.make_example(image, seed, task.num_levels, other)
    assert int(other_label) == other and not np.array_equal(changed.numpy(), inputs.numpy())


def test_the_trainer_takes_its_stage_count_from_the_task(tmp_path):
    from conftest import tiny_config
    from psl_keras.training.trainer import Trainer

    class TwoLevelRotation(TASKS["rotation"]):
        num_levels = 2

    TASKS["two_level_rotation"] = TwoLevelRotation
    try:
        trainer = Trainer(tiny_config(tmp_path, task="two_level_rotation", stage_windows="1-3,3-5"), verbose=0)
        assert [(s.level, s.trained_blocks) for s in trainer.plan] == [(1, ("B1", "B2", "B3")),
                                                                      (2, ("B3", "B4", "B5"))]
        with pytest.raises(PSLError, match="2 windows for 3 levels"):
            Trainer(tiny_config(tmp_path, task="rotation", stage_windows="1-3,3-5"), verbose=0)
    finally:
        del TASKS["two_level_rotation"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_hooks_the_stage_step_calls_convert_with_autograph(name):
    # A hook AutoGraph cannot convert still runs (as-is), but every run then prints TensorFlow's "please report
    # this" warning twice per stage; a body that is a docstring alone was such a hook.
    task = build_task(name, 32, head_hidden=8, options=OPTIONS.get(name))
    for hook in ("backbone_images", "stage_outputs", "objective", "after_step", "per_example_loss",
                 "per_example_correct"):
        tf.autograph.to_graph(getattr(task, hook))  # raises where it cannot convert
