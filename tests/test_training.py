import csv
import json
import os

import keras
import numpy as np
import pytest

from psl_keras.backbones import BLOCK_NAMES
from psl_keras.errors import PSLError
from psl_keras.training import Trainer

from conftest import synthetic_images, tiny_config


def _weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def test_psl_run_writes_checkpoints_summary_and_a_headless_backbone(tmp_path, synthetic_source):
    config = tiny_config(tmp_path)
    trainer = Trainer(config, source=synthetic_source, verbose=0)
    summary = trainer.train()
    run = config.output_dir
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert [s["blocks"] for s in summary["stages"]] == [["B1", "B2", "B3"], ["B2", "B3", "B4"], ["B3", "B4", "B5"]]
    for s in summary["stages"]:
        assert np.isfinite(s["final_loss"]) and 0.0 <= s["final_accuracy"] <= 1.0
    with open(os.path.join(run, "summary.json")) as f:
        assert json.load(f)["stages"] == json.loads(json.dumps(summary["stages"]))
    for name in ("backbone.keras", "stage1_backbone.keras", "stage2_backbone.keras", "stage3_backbone.keras",
                 "state.json", "log.csv"):
        assert os.path.exists(os.path.join(run, name)), name
    assert any(f.endswith(".index") for f in os.listdir(os.path.join(run, "checkpoints")))
    with open(os.path.join(run, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["stage"])) for r in rows] == [1, 2, 3]

    exported = keras.saving.load_model(os.path.join(run, "backbone.keras"), safe_mode=True)
    # Only the backbone: its sub-models are the five blocks, and it holds exactly the backbone's weights.
    assert [layer.name for layer in exported.layers[1:]] == list(BLOCK_NAMES)
    assert exported.count_params() == trainer.backbone.count_params()
    assert not any(w.path.startswith("g") for w in exported.weights)
    x = synthetic_images(4).astype("float32") / 255.0
    ours, theirs = trainer.backbone(x), exported(x)
    for name in BLOCK_NAMES:
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours[name]),
                                   keras.ops.convert_to_numpy(theirs[name]), atol=1e-6)


def test_e2e_is_one_stage_with_the_whole_budget(tmp_path, synthetic_source):
    summary = Trainer(tiny_config(tmp_path, mode="e2e"), source=synthetic_source, verbose=0).train()
    (stage,) = summary["stages"]
    assert stage["blocks"] == list(BLOCK_NAMES) and stage["epochs"] == 3 and stage["level"] == 3


class _Interrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (as Ctrl-C would) after `epochs` epochs or `batches` batches."""

    def __init__(self, epochs=0, batches=0):
        super().__init__()
        self.epochs, self.batches = epochs, batches

    def on_epoch_end(self, epoch, logs=None):
        self.epochs -= 1
        if self.epochs == 0:
            raise KeyboardInterrupt

    def on_train_batch_end(self, batch, logs=None):
        self.batches -= 1
        if self.batches == 0:
            raise KeyboardInterrupt


def test_resume_after_interruption_gives_the_same_backbone(tmp_path, synthetic_source):
    straight = Trainer(tiny_config(tmp_path / "a", epochs_per_stage=2), source=synthetic_source, verbose=0)
    straight.train()

    config = tiny_config(tmp_path / "b", epochs_per_stage=2)
    with pytest.raises(KeyboardInterrupt):  # stops after stage 2, epoch 1 (its checkpoint is written)
        Trainer(config, callbacks=[_Interrupt(epochs=3)], source=synthetic_source, verbose=0).train()
    with open(os.path.join(config.output_dir, "state.json")) as f:
        state = json.load(f)
    assert (state["stage"], state["epoch"]) == (2, 1)
    resumed = Trainer(config, resume=True, source=synthetic_source, verbose=0)
    summary = resumed.train()
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    for a, b in zip(_weights(straight.backbone), _weights(resumed.backbone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_existing_run_is_never_overwritten_and_resume_checks_settings(tmp_path, synthetic_source):
    config = tiny_config(tmp_path)
    Trainer(config, source=synthetic_source, verbose=0).train()
    with pytest.raises(PSLError, match="already holds a run.*--resume"):
        Trainer(config, source=synthetic_source, verbose=0).train()
    changed = tiny_config(tmp_path, mode="sl")
    with pytest.raises(PSLError, match="--mode: run has 'psl', now 'sl'"):
        Trainer(changed, resume=True, source=synthetic_source, verbose=0).train()


def test_bad_settings_are_clear_errors(tmp_path, synthetic_source):
    with pytest.raises(PSLError, match="fewer than one batch"):
        Trainer(tiny_config(tmp_path, batch_size=128), source=synthetic_source, verbose=0).train()
    with pytest.raises(PSLError, match="Unknown task"):
        Trainer(tiny_config(tmp_path, task="colorize"), source=synthetic_source, verbose=0).train()


def test_knn_monitor_reports_every_epoch(tmp_path, synthetic_source):
    config = tiny_config(tmp_path, knn_monitor=True, knn_k=5)
    trainer = Trainer(config, source=synthetic_source, knn_source=synthetic_source.head(32), verbose=0)
    summary = trainer.train()
    assert all(0.0 <= s["knn_accuracy"] <= 1.0 for s in summary["stages"])
    with open(os.path.join(config.output_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(0.0 <= float(r["knn_accuracy"]) <= 1.0 for r in rows)


def test_interrupt_inside_an_epoch_loses_no_steps(tmp_path, synthetic_source):
    straight = Trainer(tiny_config(tmp_path / "a", steps_per_epoch=4), source=synthetic_source, verbose=0)
    straight.train()
    config = tiny_config(tmp_path / "b", steps_per_epoch=4)
    with pytest.raises(KeyboardInterrupt):  # after 4 steps of S1 and 2 of S2
        Trainer(config, callbacks=[_Interrupt(batches=6)], source=synthetic_source, verbose=0).train()
    with open(os.path.join(config.output_dir, "state.json")) as f:
        state = json.load(f)
    assert (state["stage"], state["epoch"], state["step"]) == (2, 0, 2)
    resumed = Trainer(config, resume=True, source=synthetic_source, verbose=0)
    summary = resumed.train()
    assert summary["stages"][1]["final_loss"] == pytest.approx(
        json.load(open(os.path.join(tmp_path / "a" / "run", "summary.json")))["stages"][1]["final_loss"], rel=1e-5)
    for a, b in zip(_weights(straight.backbone), _weights(resumed.backbone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mixed_precision_run_keeps_float32_weights_and_logits(tmp_path, synthetic_source):
    try:
        summary = Trainer(tiny_config(tmp_path, mixed_precision=True), source=synthetic_source, verbose=0).train()
        assert keras.mixed_precision.dtype_policy().name == "mixed_bfloat16"  # no GPU here: bfloat16
        assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
        exported = keras.saving.load_model(os.path.join(tmp_path / "run", "backbone.keras"), safe_mode=True)
        assert all(w.dtype == "float32" for w in exported.weights)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
