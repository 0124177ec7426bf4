import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras.backbones import build_backbone
from psl_keras.data import ImageSource
from psl_keras.errors import PSLError
from psl_keras.evaluation import knn as knn_lib
from psl_keras.evaluation import protocols
from psl_keras.evaluation.linear import block_shapes, mean_average_precision, pool_geometry
from psl_keras.evaluation.report import write_report
from psl_keras.rundir import find_run, parse_runs


def test_pooling_gives_about_9k_dims_per_block():
    backbone = build_backbone("resnet50", 224)
    shapes = block_shapes(backbone, 224)
    dims = [pool_geometry(s, c)[0] ** 2 * c for s, c in shapes.values()]
    assert dims == [9216, 9216, 8192, 9216, 8192]  # the reference protocol's sizes
    small = build_backbone("resnet18", 32, width=0.5)
    for spatial, channels in block_shapes(small, 32).values():
        side, kernel, stride = pool_geometry(spatial, channels)
        assert (spatial - kernel) // stride + 1 == side  # the pooling really yields side x side
        assert min(6000, spatial * spatial * channels) <= side * side * channels <= 12000


def _save_tiny_backbone(tmp_path, name="run"):
    keras.utils.set_random_seed(0)
    run_dir = tmp_path / name
    run_dir.mkdir()
    build_backbone("resnet18", 32, width=0.125).save(str(run_dir / "backbone.keras"))
    return find_run(str(run_dir))


def _linear_dataset(count, seed):
    """Label = which of two fixed random patterns the image leans towards: linear in the pixels."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).normal(size=(2, 32, 32, 3))
    labels = rng.integers(0, 2, count)
    images = 128 + 25 * rng.normal(size=(count, 32, 32, 3)) + 40 * patterns[labels]
    return ImageSource.from_arrays("linear", np.clip(images, 0, 255), labels, num_classes=2)


def _colour_dataset(count, seed):
    """Label = whether the red or the blue channel is brighter: what a pooled top block can learn fast."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, count)
    shift = np.where(labels[:, None] == 0, [40, 0, -40], [-40, 0, 40])[:, None, None, :]
    images = 128 + 30 * rng.normal(size=(count, 32, 32, 3)) + shift
    return ImageSource.from_arrays("colour", np.clip(images, 0, 255), labels, num_classes=2)


def test_block1_probe_learns_a_linear_label(tmp_path):
    run = _save_tiny_backbone(tmp_path)
    config = protocols.EvalConfig(epochs=6, batch_size=64, lr=0.05, blocks=("B1", "B5"))
    sources = (_linear_dataset(512, 0), _linear_dataset(256, 1))
    result = protocols.all_blocks(run, config, tf.distribute.get_strategy(), sources, verbose=0)
    assert result["B1"] > 0.9, result  # a probe that cannot learn is caught here
    assert result["geometry"]["B1"]["dims"] == 32 * 32 * 8  # 8 channels: all 32x32 positions fit in 9216


@pytest.mark.parametrize("k", [3, 20])
def test_knn_matches_a_brute_force_reference(k):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(300, 16))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = rng.normal(size=(50, 16))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    labels = rng.integers(0, 5, 300)
    t = 0.1
    expected = []
    for q in queries:
        similarity = bank @ q
        top = np.argsort(-similarity)[:k]
        votes = np.zeros(5)
        np.add.at(votes, labels[top], np.exp(similarity[top] / t))
        expected.append(votes.argmax())
    predicted = knn_lib.knn_predict(bank, labels, queries, 5, k=k, temperature=t, chunk=16)
    np.testing.assert_array_equal(predicted, expected)


def test_balanced_subset_is_exact_and_seeded():
    labels = np.repeat(np.arange(10), 500)
    a = protocols.balanced_subset(labels, 0.01, seed=0)
    assert np.bincount(labels[a]).tolist() == [5] * 10
    np.testing.assert_array_equal(a, protocols.balanced_subset(labels, 0.01, seed=0))
    assert not np.array_equal(a, protocols.balanced_subset(labels, 0.01, seed=1))
    with pytest.raises(PSLError, match="fewer than"):
        protocols.balanced_subset(np.array([0, 0, 0, 1]), 1.0, seed=0)


def test_mean_average_precision():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    perfect = labels * 0.9 + 0.05
    assert mean_average_precision(labels, perfect) == pytest.approx(1.0)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [0.2, 0.9]])
    # class 0 ranked +,-,-,+ -> AP = (1/1 + 2/4) / 2; class 1 ranked -,+,+,- -> AP = (1/2 + 2/3) / 2
    assert mean_average_precision(labels, scores) == pytest.approx(((1 + 2 / 4) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_report_has_a_row_per_run(tmp_path):
    rows = [{"run": "e2e", "B1": 0.2, "B5": 0.6}, {"run": "psl", "B1": 0.25, "B5": 0.55}]
    paths = write_report(str(tmp_path), {"linear": {"title": "t", "rows": rows, "columns": ["B1", "B5"]}}, {})
    text = open(paths["results.md"]).read()
    assert "| e2e | 20.0 | **60.0** | B5 |" in text and "| psl | 25.0 | **55.0** | B5 |" in text
    assert os.path.getsize(paths["linear.png"]) > 1000
    assert open(paths["linear.csv"]).read().splitlines() == ["run,B1,B5", "e2e,0.2,0.6", "psl,0.25,0.55"]


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(PSLError, match="not a finished psl-keras run"):
        find_run(str(tmp_path))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "backbone.keras").write_bytes(b"not a zip")
    run = find_run(str(tmp_path / "broken"))
    with pytest.raises(PSLError, match="Cannot load"):
        protocols.knn(run, protocols.EvalConfig(), sources=(_linear_dataset(8, 0), _linear_dataset(8, 1)))
    with pytest.raises(PSLError, match="both called"):
        parse_runs(f"{tmp_path / 'broken'},{tmp_path / 'broken'}")
    good = _save_tiny_backbone(tmp_path, "tiny")
    big = ImageSource.from_arrays("photos", np.zeros((4, 224, 224, 3), np.uint8), [0, 1, 0, 1])
    with pytest.raises(PSLError, match="takes 32x32 images but photos has 224x224"):
        protocols.knn(good, protocols.EvalConfig(), sources=(big, big))


def _capture_evaluated_models(monkeypatch):
    """Records the model each protocol scores, so a test can look at what training did to it."""
    models = []
    original = protocols.evaluate

    def recording_evaluate(model, *args, **kwargs):
        models.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(protocols, "evaluate", recording_evaluate)
    return models


def _file_weights(run):
    saved = keras.saving.load_model(run.backbone_path, safe_mode=True)
    return [keras.ops.convert_to_numpy(w) for w in saved.weights]


def test_semi_fine_tunes_the_whole_network_on_a_balanced_subset_or_an_ids_file(tmp_path, monkeypatch):
    run = _save_tiny_backbone(tmp_path)
    models = _capture_evaluated_models(monkeypatch)
    train, held_out = _colour_dataset(256, 0), _colour_dataset(128, 1)
    config = protocols.EvalConfig(epochs=4, batch_size=32, lr=0.05)
    strategy = tf.distribute.get_strategy()
    result = protocols.semi(run, config, strategy, 0.5, sources=(train, held_out), verbose=0)
    assert result["labelled_examples"] == 128
    assert result["top5"] == 1.0  # two classes: the label is always among the top 2
    assert result["top1"] > 0.8, result  # chance is 0.5
    # Semi-supervised fine-tuning trains every layer of the backbone, not only a new head.
    (model,) = models
    tuned = [keras.ops.convert_to_numpy(w) for w in model.backbone.weights]
    for block in ("B1", "B5"):
        kernel = model.backbone.get_layer(block).trainable_weights[0]
        index = [w.path for w in model.backbone.weights].index(kernel.path)
        assert not np.array_equal(tuned[index], _file_weights(run)[index]), block

    train.ids = np.array([f"img_{i}" for i in range(256)])
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(f"img_{i}" for i in range(0, 64, 4)) + "\n")
    config = protocols.EvalConfig(epochs=1, batch_size=16, lr=0.01, label_ids_file=str(ids_file))
    assert protocols.semi(run, config, strategy, 0.0, (train, held_out), verbose=0)["labelled_examples"] == 16
    ids_file.write_text("img_1\nimg_999\n")
    with pytest.raises(PSLError, match="1 of 2 ids are not in"):
        protocols.semi(run, config, strategy, 0.0, (train, held_out), verbose=0)


def test_linear_probes_leave_the_backbone_bit_identical_and_pool_to_the_protocol_size(tmp_path, monkeypatch):
    """Frozen features: after probe training every backbone weight, BatchNorm statistics included, equals the
    file. Each head pools its block to the geometry reported, normalises without learned scale or offset,
    and learns only a linear layer."""
    run = _save_tiny_backbone(tmp_path)
    models = _capture_evaluated_models(monkeypatch)
    config = protocols.EvalConfig(epochs=1, batch_size=64, lr=0.05)
    result = protocols.all_blocks(run, config, tf.distribute.get_strategy(),
                                  (_linear_dataset(256, 0), _linear_dataset(64, 1)), verbose=0)
    (probe,) = models
    for ours, saved in zip([keras.ops.convert_to_numpy(w) for w in probe.backbone.weights], _file_weights(run)):
        np.testing.assert_array_equal(ours, saved)
    shapes = block_shapes(probe.backbone, 32)
    for head, name in zip(probe.heads, probe.block_names):
        spatial, channels = shapes[name]
        flat = head.layers[1](head.layers[0](np.zeros((1, spatial, spatial, channels), "float32")))
        assert flat.shape[-1] == result["geometry"][name]["dims"]
        side = pool_geometry(spatial, channels)[0]
        assert result["geometry"][name]["dims"] == side * side * channels
        assert sorted(w.path.rsplit("/", 1)[-1] for w in head.trainable_weights) == ["bias", "kernel"]
        dense = head.layers[-1]
        assert isinstance(dense, keras.layers.Dense) and dense.kernel.shape == (side * side * channels, 2)


def test_knn_features_are_pooled_normalised_block_outputs_of_the_center_view(tmp_path):
    run = _save_tiny_backbone(tmp_path)
    backbone = keras.saving.load_model(run.backbone_path, safe_mode=True)
    source = _linear_dataset(40, 3)
    features, labels = knn_lib.extract_features(backbone, source, 32, ["B2", "B5"], batch_size=16)
    np.testing.assert_array_equal(labels, source.arrays[1])
    outputs = backbone(source.arrays[0].astype("float32") / 255.0, training=False)
    for block in ("B2", "B5"):
        pooled = keras.ops.convert_to_numpy(outputs[block]).mean(axis=(1, 2))
        expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        np.testing.assert_allclose(features[block], expected, atol=1e-5)


def test_transfer_probe_scores_multi_label_data_with_map(tmp_path):
    run = _save_tiny_backbone(tmp_path)
    rng = np.random.default_rng(0)

    def multi_label(count):
        labels = rng.integers(0, 2, (count, 3))
        images = 100 + 100 * labels[:, None, None, :] + 10 * rng.normal(size=(count, 32, 32, 3))
        source = ImageSource.from_arrays("multi", np.clip(images, 0, 255), labels, num_classes=3)
        source.multi_label = True
        return source

    config = protocols.EvalConfig(epochs=4, batch_size=32, lr=0.05, blocks=("B1",))
    result = protocols.all_blocks(run, config, tf.distribute.get_strategy(), (multi_label(256), multi_label(64)),
                                  verbose=0)
    assert result["metric"] == "mAP" and result["B1"] > 0.9  # each label is one colour channel's brightness


def test_an_interrupted_probe_continues_from_its_last_epoch_with_resume_dir(tmp_path, monkeypatch):
    """Probe training keeps its state per epoch in --resume_dir: killed in epoch 2, the same call continues
    after epoch 1 (running only the epochs left) and ends where an unbroken run ends."""
    run = _save_tiny_backbone(tmp_path)
    sources = (_linear_dataset(256, 0), _linear_dataset(64, 1))
    strategy = tf.distribute.get_strategy()
    models = _capture_evaluated_models(monkeypatch)
    config = protocols.EvalConfig(epochs=3, batch_size=64, lr=0.05, blocks=("B1", "B5"))
    unbroken = protocols.all_blocks(run, config, strategy, sources, verbose=0)
    unbroken_heads = [keras.ops.convert_to_numpy(w) for w in models[-1].heads[1].weights]

    config = protocols.EvalConfig(epochs=3, batch_size=64, lr=0.05, blocks=("B1", "B5"),
                                  resume_dir=str(tmp_path / "state"))
    epochs_run = []
    original = protocols.loop.run_epoch

    def killed_in_epoch_2(*args, **kwargs):
        epochs_run.append(1)
        if len(epochs_run) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(protocols.loop, "run_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        protocols.all_blocks(run, config, strategy, sources, verbose=0)
    epochs_run.clear()
    monkeypatch.setattr(protocols.loop, "run_epoch",
                        lambda *args, **kwargs: (epochs_run.append(1), original(*args, **kwargs))[1])
    resumed = protocols.all_blocks(run, config, strategy, sources, verbose=0)
    assert len(epochs_run) == 2  # epochs 2 and 3: epoch 1 came from the state folder
    resumed_heads = [keras.ops.convert_to_numpy(w) for w in models[-1].heads[1].weights]
    for ours, theirs in zip(resumed_heads, unbroken_heads):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)  # multi-threaded kernels: rounding
    assert abs(resumed["B5"] - unbroken["B5"]) <= 2 / 64  # at most a borderline example or two
    # Settings that do not change probe training (kNN's k here) may differ: the finished state is reused as is.
    epochs_run.clear()
    again = protocols.all_blocks(run, dataclasses.replace(config, k=5), strategy, sources, verbose=0)
    assert epochs_run == [] and abs(again["B5"] - resumed["B5"]) <= 1 / 64
    # A folder of other settings is refused by name, not silently mixed in.
    other = protocols.EvalConfig(epochs=3, batch_size=64, lr=0.1, blocks=("B1", "B5"),
                                 resume_dir=str(tmp_path / "state"))
    with pytest.raises(PSLError, match="other settings.*lr"):
        protocols.all_blocks(run, other, strategy, sources, verbose=0)
