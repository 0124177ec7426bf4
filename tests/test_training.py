import csv
import json
import os

import keras
import numpy as np
import pytest

from psl_keras.backbones import BLOCK_NAMES
from psl_keras.errors import PSLError
from psl_keras.training.trainer import Trainer, steady_images_per_sec

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
        assert s["images_per_sec"] > 0  # 2 steps an epoch: the second one is timed
    with open(os.path.join(run, "summary.json")) as f:
        saved = json.load(f)
    assert saved["stages"] == json.loads(json.dumps(summary["stages"]))
    import psl_keras  # the versions a result was made with: psl-keras's own among them

    assert saved["machine"]["versions"]["psl_keras"] == psl_keras.__version__
    assert {"keras", "tensorflow"} <= set(saved["machine"]["versions"]) and saved["machine"]["backend"] == "tensorflow"
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
    # The interrupt came inside epoch 3's end callbacks, before its log row: --resume runs them again.
    with open(os.path.join(config.output_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [(float(r["stage"]), float(r["stage_epoch"])) for r in rows[2:4]] == [(2, 1), (2, 2)]


def test_log_csv_replaces_a_replayed_epoch_and_drops_a_row_cut_short(tmp_path):
    from psl_keras.training.callbacks import RunCSVLogger

    path = tmp_path / "log.csv"
    logger = RunCSVLogger(str(path))
    logger.on_epoch_end(0, {"loss": 2.0})
    logger.on_epoch_end(1, {"loss": 1.5})
    logger.on_epoch_end(1, {"loss": 1.4})  # epoch 2's callbacks replayed after a kill that followed its row
    with open(path, "a") as f:
        f.write("3,1.")  # a row a kill cut short
    logger.on_epoch_end(2, {"loss": 1.2})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "2.0"), ("2", "1.4"), ("3", "1.2")]


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
    with pytest.raises(PSLError, match="--backend jax needs Keras on JAX"):
        Trainer(tiny_config(tmp_path, backend="jax"), source=synthetic_source, verbose=0)


def test_knn_monitor_reports_the_stage_blocks_accuracy_every_epoch(tmp_path, synthetic_source):
    """The monitor's number is weighted kNN on the stage's own last block (B3, B4, B5 in turn), recomputed
    here from each exported stage backbone with the evaluation code."""
    from psl_keras.evaluation import knn as knn_lib

    config = tiny_config(tmp_path, knn_monitor=True, knn_k=5)
    query = synthetic_source.head(48)
    summary = Trainer(config, source=synthetic_source, knn_source=query, verbose=0).train()
    with open(os.path.join(config.output_dir, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for stage, row in zip(summary["stages"], rows):
        block = stage["last_block"]
        backbone = keras.saving.load_model(os.path.join(config.output_dir, f"stage{stage['stage']}_backbone.keras"),
                                           safe_mode=True)
        bank, bank_labels = knn_lib.extract_features(backbone, synthetic_source, 32, [block])
        queries, query_labels = knn_lib.extract_features(backbone, query, 32, [block])
        expected = knn_lib.knn_accuracy(bank[block], bank_labels, queries[block], query_labels, 4, k=5)
        assert stage["knn_accuracy"] == pytest.approx(expected, abs=1e-9), block
        assert float(row["knn_accuracy"]) == pytest.approx(expected, abs=1e-6), block


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
        import tensorflow as tf
        expected = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
        assert keras.mixed_precision.dtype_policy().name == expected
        assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
        exported = keras.saving.load_model(os.path.join(tmp_path / "run", "backbone.keras"), safe_mode=True)
        assert all(w.dtype == "float32" for w in exported.weights)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_each_stage_trains_its_window_and_its_own_head_on_its_own_level(tmp_path, synthetic_source, monkeypatch):
    """Through the trainer: the level the data is made for, the head's classes and the trained blocks of
    every stage, for psl and for sl (the hardest level in every stage)."""
    from psl_keras.tasks.rotation import RotationTask

    levels = []
    original = RotationTask.preprocess

    def recording_preprocess(self, image, seed, level):
        levels.append(level)  # runs while tf.data traces the pipeline of each epoch
        return original(self, image, seed, level)

    monkeypatch.setattr(RotationTask, "preprocess", recording_preprocess)

    class RecordStage(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            model = self.model
            seen.append((model.stage.level, int(model.head.output.shape[-1]),
                         tuple(b.name for b in model.trained_blocks), tuple(b.name for b in model.forward_blocks)))

    for mode, expected_levels, classes in (("psl", [1, 2, 3], [2, 4, 8]), ("sl", [3, 3, 3], [8, 8, 8])):
        seen, levels[:] = [], []
        Trainer(tiny_config(tmp_path / mode, mode=mode), callbacks=[RecordStage()], source=synthetic_source,
                verbose=0).train()
        assert [s[0] for s in seen] == expected_levels and [s[1] for s in seen] == classes
        assert [s[2] for s in seen] == [("B1", "B2", "B3"), ("B2", "B3", "B4"), ("B3", "B4", "B5")]
        assert [s[3] for s in seen] == [(), ("B1",), ("B1", "B2")]
        assert sorted(set(levels)) == sorted(set(expected_levels)) and levels[0] == expected_levels[0]


def test_every_stage_restarts_its_schedule(tmp_path, synthetic_source):
    """A fresh optimizer per stage: the cosine schedule of each stage runs from lr to 0 over that stage's
    own steps (log.csv records the rate after each epoch: half way, then zero)."""
    config = tiny_config(tmp_path, epochs_per_stage=2, schedule="cosine", lr=0.1)
    Trainer(config, source=synthetic_source, verbose=0).train()
    with open(os.path.join(config.output_dir, "log.csv")) as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    assert rates == pytest.approx([0.05, 0.0, 0.05, 0.0, 0.05, 0.0], abs=1e-7)
    # With a warm-up of one epoch (2 steps here): linear up to lr over that epoch's steps, then cosine to 0.
    config = tiny_config(tmp_path / "warmup", mode="e2e", e2e_epochs=3, schedule="cosine", lr=0.1, warmup_epochs=1)
    Trainer(config, source=synthetic_source, verbose=0).train()
    with open(os.path.join(config.output_dir, "log.csv")) as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    assert rates == pytest.approx([0.1, 0.05, 0.0], abs=1e-7)


def test_stage_exports_keep_frozen_blocks_bit_identical(tmp_path, synthetic_source):
    """Isolation end to end, in the files a run leaves: after S2 B1 is what S1 left, after S3 B1 and B2 are;
    B5 is untouched until S3. psl_f, whose stages all train B1, changes it every stage."""

    def block_weights(run_dir, stage):
        model = keras.saving.load_model(os.path.join(run_dir, f"stage{stage}_backbone.keras"), safe_mode=True)
        return {b: [keras.ops.convert_to_numpy(w) for w in model.get_layer(b).weights] for b in BLOCK_NAMES}

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(a, b))

    for mode in ("psl", "psl_f"):
        config = tiny_config(tmp_path / mode, mode=mode)
        Trainer(config, source=synthetic_source, verbose=0).train()
        w = {(s, b): weights for s in (1, 2, 3) for b, weights in block_weights(config.output_dir, s).items()}
        if mode == "psl":
            assert same(w[1, "B1"], w[2, "B1"]) and same(w[2, "B1"], w[3, "B1"])
            assert same(w[2, "B2"], w[3, "B2"]) and not same(w[1, "B2"], w[2, "B2"])
        else:
            assert not same(w[1, "B1"], w[2, "B1"]) and not same(w[2, "B1"], w[3, "B1"])
        assert same(w[1, "B5"], w[2, "B5"]) and not same(w[2, "B5"], w[3, "B5"])
        assert not same(w[1, "B4"], w[2, "B4"])


def test_data_order_is_reshuffled_every_epoch_and_stage_and_repeats_with_the_seed(tmp_path):
    """The trainer's own per-epoch pipelines: a fresh seeded permutation for every (stage, epoch), the same
    one when built again. Images are constant (value = 3 x index), so the rotated views reveal the order."""
    from psl_keras.data import ImageSource

    images = np.repeat(np.repeat(np.repeat((3 * np.arange(64, dtype=np.uint8))[:, None, None, None], 32, 1), 32, 2),
                       3, 3)
    source = ImageSource.from_arrays("indexed", images)

    def order(seed, stage_index, epoch):
        trainer = Trainer(tiny_config(tmp_path, seed=seed), source=source, verbose=0)
        trainer._build()
        dataset = trainer._epoch_batches(trainer.plan[stage_index - 1], epoch)
        views = np.concatenate([keras.ops.convert_to_numpy(inputs) for inputs, _ in dataset])
        return np.round(views.mean(axis=(1, 2, 3)) * 255 / 3).astype(int)

    first = order(0, 1, 0)
    assert sorted(first.tolist()) == list(range(64))
    np.testing.assert_array_equal(first, order(0, 1, 0))
    for other in (order(0, 1, 1), order(0, 2, 0), order(1, 1, 0)):
        assert sorted(other.tolist()) == list(range(64)) and not np.array_equal(first, other)


def test_runs_keep_their_heads_and_backbone_plus_head_reproduce_the_stage_logits(tmp_path, synthetic_source):
    from psl_keras.rundir import find_run, load_stage_heads, run_task
    from psl_keras.stages import stage_logits
    from psl_keras.tasks import build_task

    live = {}

    class KeepStageOutputs(keras.callbacks.Callback):
        def on_train_end(self, logs=None):  # the stage model as training left it
            live[self.model.stage.index] = keras.ops.convert_to_numpy(self.model(inputs, training=False))

    task = build_task("rotation", 32, head_hidden=16)
    examples = [task.preprocess(image, np.array([0, i]), 3) for i, image in enumerate(synthetic_images(6, seed=4))]
    inputs = np.stack([keras.ops.convert_to_numpy(x) for x, _ in examples])
    config = tiny_config(tmp_path)
    Trainer(config, callbacks=[KeepStageOutputs()], source=synthetic_source, verbose=0).train()
    run = find_run(config.output_dir)
    heads = load_stage_heads(run)
    assert [(h.stage, h.level, h.last_block) for h in heads] == [(1, 1, "B3"), (2, 2, "B4"), (3, 3, "B5")]
    assert run_task(run).get_config() == task.get_config()
    for head in heads:
        backbone = keras.saving.load_model(os.path.join(run.path, f"stage{head.stage}_backbone.keras"), safe_mode=True)
        logits = keras.ops.convert_to_numpy(stage_logits(backbone, head, task, inputs))
        assert logits.shape == (6, task.num_classes(head.level))
        np.testing.assert_array_equal(logits, live[head.stage])  # the same computation, bit for bit
    # A run from before heads were kept still loads; it simply has none.
    run.summary["stages"] = [{k: v for k, v in s.items() if k != "head_file"} for s in run.summary["stages"]]
    assert load_stage_heads(run) == []


def test_a_non_finite_loss_stops_the_run_and_a_lower_lr_resumes_it(tmp_path, synthetic_source):
    # lr 1e30 with a 2-step warm-up from 0: update 1 changes nothing (lr 0), update 2 blows the weights up, and
    # the loss of step 3 is NaN. The checkpoint after step 2 holds those weights, so the run goes back to the one
    # after step 1 and says so.
    config = dict(lr=1e30, warmup_epochs=1, steps_per_epoch=3, checkpoint_every_steps=1)
    blowing_up = tiny_config(tmp_path, **config)
    with pytest.raises(PSLError) as stop:
        Trainer(blowing_up, source=synthetic_source, verbose=0).train()
    with open(os.path.join(blowing_up.output_dir, "state.json")) as f:
        state = json.load(f)
    message = str(stop.value)
    assert "(stage 1) epoch 1 step 3: the loss is nan (the first step from" in message and "ckpt-2" in message
    assert (state["stage"], state["epoch"], state["step"]) == (1, 0, 1) and state["checkpoint"].endswith("ckpt-1")
    assert f"the last good checkpoint, {state['checkpoint']} (stage 1, 0 epoch(s) and 1 step(s) done)" in message
    assert "--resume" in message

    trainer = Trainer(tiny_config(tmp_path, **{**config, "lr": 0.05}), resume=True, source=synthetic_source,
                      verbose=0)
    restored = []
    original = trainer.runtime.restore_backbone
    trainer.runtime.restore_backbone = lambda backbone, path: (restored.append(path), original(backbone, path))
    summary = trainer.train()
    assert restored == [state["checkpoint"]]  # it continued from the last good checkpoint
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])


def test_a_stalled_step_does_not_pull_down_a_stages_images_per_sec():
    # 200 steps at 100 images/s and one that sat paused for half an hour (0.3 images/s): the stage ran at 100.
    rates = [100.0] * 100 + [512 / 1800] + [100.0] * 100
    assert steady_images_per_sec(rates) == pytest.approx(100.0)
    assert steady_images_per_sec([80.0, 120.0, 100.0]) == pytest.approx(100.0)
    assert steady_images_per_sec([]) is None
