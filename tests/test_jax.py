"""Keras on JAX: the model code imports without TensorFlow, and a JAX stage step trains exactly the
stage's blocks and head, within float32 rounding of the TF step from the same weights and batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from psl_keras.tasks import build_task

pytest.importorskip("jax")
HELPER = os.path.join(REPO, "tests", "helpers", "stage_step.py")
BLOCK_OF = {"conv1": "B1", "conv2": "B2", "conv3": "B3", "conv4": "B4", "conv5": "B5"}


def run(code_or_args, backend, helper=False, **env_extra):
    env = dict(os.environ, KERAS_BACKEND=backend, **env_extra)
    command = [sys.executable, HELPER, *code_or_args] if helper else [sys.executable, "-c", code_or_args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_model_code_imports_and_builds_without_tensorflow(tmp_path):
    # ... and the on-device rotation augmentation runs there, matching the TF pipeline's geometry.
    from conftest import synthetic_images

    images = synthetic_images(6, 32, seed=1)
    rng = np.random.default_rng(0)
    labels, flips = rng.integers(0, 8, 6), rng.integers(0, 2, 6)
    offsets = rng.uniform(-1, 1, (6, 2)).astype("float32")
    np.savez(tmp_path / "batch.npz", images=images, labels=labels, flips=flips, offsets=offsets)
    out = run(f"""
import sys
for name in ("tensorflow", "tensorflow_datasets", "keras_cv"):
    sys.modules[name] = None  # any import of them now fails
import keras
import numpy as np
from psl_keras import stages
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.training.jax_step import JaxStageStep
from psl_keras.tasks import TASKS, build_task
from psl_keras.data import arrays  # array datasets load with NumPy alone
backbone = build_backbone("resnet18", 32, width=0.125)
for name in TASKS:
    task = build_task(name, 32, head_hidden=8, options={{"set_sizes": "4,8,16"}} if name == "jigsaw" else None)
    for stage in stages.stage_plan("psl", 3):
        head = task.build_head(stage.level, backbone_blocks(backbone)[stage.last_block - 1].output.shape[-1], "g")
        stages.StageModel(backbone_blocks(backbone), stage, head, task, 8)
batch = np.load("{tmp_path / 'batch.npz'}")
rotated = build_task("rotation", 32).batch_rotate(batch["images"], batch["labels"], 3, batch["flips"],
                                                   batch["offsets"])
np.save("{tmp_path / 'rotated.npy'}", np.asarray(rotated))
print(keras.backend.backend(), "built")
""", "jax")
    assert out.strip().endswith("jax built")
    import tensorflow as tf

    task = build_task("rotation", 32)
    reference = np.stack([np.clip(task.rotate(tf.image.convert_image_dtype(images[i], tf.float32), labels[i], 3,
                                              flips[i], tf.constant(offsets[i])), 0, 1) for i in range(6)])
    assert np.abs(np.load(tmp_path / "rotated.npy") - reference).max() < 1e-5


def test_jigsaw_puzzles_and_simclr_views_made_on_the_device_match_the_tf_pipeline(tmp_path):
    """The on-device input paths of jigsaw and SimCLR, run under JAX without TensorFlow, against the
    TF pipeline's own functions fed the same random choices: the resize, crop, flip, tile cuts, per-tile
    normalisation and permutation of a puzzle; the crop, colour jitter, grayscale, blur and Sobel of a view."""
    from conftest import synthetic_images

    images = synthetic_images(4, 32, seed=2)
    np.save(tmp_path / "images.npy", images)
    run(f"""
import pickle, sys
for name in ("tensorflow", "tensorflow_datasets", "keras_cv"):
    sys.modules[name] = None
import numpy as np
from psl_keras.tasks import build_task
images = np.load("{tmp_path / 'images.npy'}")
jigsaw = build_task("jigsaw", 32, options={{"set_sizes": "4,8,16", "tile_color_jitter": 0.1, "tile_grayscale": 0.5}})
jigsaw_params = jigsaw.draw_array_params(np.random.default_rng(0), 4, 2)
puzzles, labels = jigsaw.array_examples(images, jigsaw_params, 2)
simclr = build_task("simclr", 32)
simclr_params = simclr.draw_array_params(np.random.default_rng(2), 4, 3)
views, _ = simclr.array_examples(images, simclr_params, 3)
pickle.dump({{"jigsaw_params": jigsaw_params, "puzzles": np.asarray(puzzles), "labels": np.asarray(labels),
             "simclr_params": simclr_params, "views": np.asarray(views)}}, open("{tmp_path / 'out.pkl'}", "wb"))
""", "jax")
    import pickle

    import tensorflow as tf

    from psl_keras.data import augment
    from psl_keras.tasks import jigsaw as jigsaw_module

    out = pickle.load(open(tmp_path / "out.pkl", "rb"))
    task = build_task("jigsaw", 32, options={"set_sizes": "4,8,16", "tile_color_jitter": 0.1, "tile_grayscale": 0.5})
    p = out["jigsaw_params"]
    assert out["puzzles"].shape == (4, 9, task.tile_size, task.tile_size, 3)
    np.testing.assert_array_equal(out["labels"], p["labels"])
    assert len({tuple(c) for c in p["corners"]}) > 1 and set(p["flips"]) == {0, 1}  # the choices vary
    for i in range(4):
        image = jigsaw_module.resize_shorter_side(tf.image.convert_image_dtype(images[i], tf.float32),
                                                  task.resize_shorter)
        (y, x), size = p["corners"][i], task.crop_size
        crop = image[y:y + size, x:x + size]
        crop = tf.reverse(crop, [1]) if p["flips"][i] else crop
        tiles = jigsaw_module.cut_tiles(crop, task.cell_size, task.tile_size, tf.constant(p["offsets"][i]))
        tiles = tiles + p["jitter"][i][:, None, None, :]
        tiles = tf.where(p["gray"][i][:, None, None, None] > 0.5, tf.image.rgb_to_grayscale(tiles) * tf.ones(3),
                         tiles)
        tiles = jigsaw_module.normalize_tile(tiles)
        reference = tf.gather(tiles, task.level_permutations(2)[p["labels"][i]].astype(np.int32)).numpy()
        np.testing.assert_allclose(out["puzzles"][i], reference, atol=1e-4)
    # SimCLR: views [B, 2, ...], rows 2k and 2k + 1 of the choices being image k's two views; T3's steps in order.
    p, views = out["simclr_params"], out["views"]
    assert views.shape == (4, 2, 32, 32, 3) and views.min() >= 0.0 and views.max() <= 1.0
    assert all(set(p[k]) == {0, 1} for k in ("flips", "jitter", "gray", "blur", "sobel"))  # each step both ways
    ladder = augment.simclr_ladder(32, strength=0.5)
    crop, jitter, gray, blur, sobel = ladder.level(3)
    for row in range(8):
        image, (y, x, h, w) = images[row // 2], p["boxes"][row]
        view = tf.image.resize(tf.slice(image, [y, x, 0], [h, w, 3]), [32, 32]) / 255.0
        view = tf.clip_by_value(tf.reverse(view, [1]) if p["flips"][row] else view, 0.0, 1.0)
        if p["jitter"][row]:
            view = jitter.jitter(view, {k: tf.constant(p[k][row]) for k in ("brightness", "contrast", "saturation",
                                                                             "hue", "order")})
        view = view[tf.newaxis]
        if p["gray"][row]:
            view = gray.grayscale.augment_images(view)
        if p["blur"][row]:
            view = augment.gaussian_blur(view, tf.constant(p["sigma"][row:row + 1]), blur.radius(32))
        if p["sobel"][row]:
            view = augment.sobel_magnitude(view)
        np.testing.assert_allclose(views[row // 2, row % 2], np.clip(view[0].numpy(), 0, 1), atol=2e-4)


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("stage_step"))
    run([directory, "--init"], "tensorflow", helper=True)
    run([directory, "--record=0,1,3"], "jax", helper=True)
    run([directory, "--record=1"], "tensorflow", helper=True)
    run([directory, "--record=1"], "jax", helper=True, STAGE_STEP_DEVICES="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return {name[:-4]: dict(np.load(os.path.join(directory, name))) for name in os.listdir(directory)
            if name.endswith(".npz") and name != "batches.npz"}


def test_jax_step_trains_the_window_and_head_only(steps):
    before, after = steps["jax_0"], steps["jax_3"]
    changed = {key for key in before if key != "losses" and not np.array_equal(before[key], after[key])}
    for key in before:
        if key.startswith("backbone/"):
            block = BLOCK_OF[key.split("/")[1].split("_")[0]]
            if block in ("B1", "B5"):  # before the window (inference mode, no gradient); after it (never run)
                assert key not in changed, key
    assert any(k.startswith("backbone/conv2") for k in changed) and any(k.startswith("backbone/conv4") for k in changed)
    assert any(k.startswith("head/") for k in changed)


def test_jax_step_matches_the_tensorflow_step(steps):
    jax_1, tf_1 = steps["jax_1"], steps["tensorflow_1"]
    assert abs(jax_1["losses"][0] - tf_1["losses"][0]) <= 1e-5 * abs(tf_1["losses"][0])
    for key in jax_1:
        if key != "losses":
            assert np.allclose(jax_1[key], tf_1[key], rtol=1e-5, atol=1e-5), key  # float32 rounding


def test_a_two_device_jax_step_equals_the_one_device_step(steps):
    # The batch split over 2 CPU devices, the state replicated: the same loss and update as on one device.
    one, two = steps["jax_1"], steps["jax_1_2dev"]
    assert abs(one["losses"][0] - two["losses"][0]) <= 1e-5 * abs(one["losses"][0])
    for key in one:
        if key != "losses":
            assert np.allclose(one[key], two[key], rtol=1e-5, atol=1e-5), key


# --- the JAX trainer: train.py --backend jax, where TensorFlow is absent ------------------------------------
WITHOUT_TF = os.path.join(REPO, "tests", "helpers", "without_tensorflow.py")
JAX_RUN = ["--backend", "jax", "--config", "cifar10_small", "--epochs_per_stage", "1", "--steps_per_epoch", "2",
           "--batch_size", "16", "--width", "0.125", "--head_hidden", "16", "--checkpoint_every_steps", "1"]


def train_without_tf(arguments, check=True, **env_extra):
    env = dict(os.environ, KERAS_BACKEND="jax", **env_extra)
    result = subprocess.run([sys.executable, WITHOUT_TF, "train.py", *JAX_RUN, *arguments], capture_output=True,
                            text=True, timeout=600, cwd=REPO, env=env)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def load_weights(path):
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path, safe_mode=True, compile=False).weights]


@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory):
    from conftest import synthetic_images
    from psl_keras.data.arrays import save_arrays

    root = tmp_path_factory.mktemp("jax_runs")
    data = str(root / "train.npz")
    save_arrays(data, synthetic_images(64, 32, seed=3), np.arange(64) % 4, "synthetic", "train", num_classes=4)
    dataset = ["--dataset", f"arrays:{data}"]
    runs = {name: str(root / name) for name in ("unbroken", "killed", "two_devices")}
    train_without_tf([*dataset, "--output_dir", runs["unbroken"]])
    # Killed (SIGKILL) right after stage 2's first checkpoint, then resumed: the way a preempted job continues.
    killed = train_without_tf([*dataset, "--output_dir", runs["killed"]], check=False,
                              PSL_KERAS_KILL_AT="after_checkpoint:3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    train_without_tf([*dataset, "--output_dir", runs["killed"], "--resume"])
    train_without_tf([*dataset, "--output_dir", runs["two_devices"]],
                     XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return runs


def test_jax_run_writes_the_run_directory_of_the_tensorflow_trainer(jax_runs):
    import json

    run = jax_runs["unbroken"]
    for name in ("backbone.keras", "log.csv", "state.json", "summary.json", "stage1_backbone.keras",
                 "stage3_head.keras"):
        assert os.path.exists(os.path.join(run, name)), name
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert summary["config"]["backend"] == "jax" and summary["strategy"]["replicas"] == 1
    assert summary["machine"]["backend"] == "jax" and "jax" in summary["machine"]["versions"]
    assert all(np.isfinite(s["final_loss"]) for s in summary["stages"])
    assert sorted(os.listdir(os.path.join(run, "checkpoints"))) == ["ckpt-5.npz", "ckpt-6.npz"]  # two newest kept
    # Stage 1's backbone differs from the final one only where stages 2 and 3 trained: B1 is frozen after S1.
    stage1, final = load_weights(os.path.join(run, "stage1_backbone.keras")), load_weights(
        os.path.join(run, "backbone.keras"))
    assert any(not np.array_equal(a, b) for a, b in zip(stage1, final))


def test_a_killed_jax_run_resumes_to_the_unbroken_result(jax_runs):
    unbroken = load_weights(os.path.join(jax_runs["unbroken"], "backbone.keras"))
    resumed = load_weights(os.path.join(jax_runs["killed"], "backbone.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(unbroken, resumed))


def test_a_two_device_jax_run_equals_the_one_device_run(jax_runs):
    import json

    two = json.load(open(os.path.join(jax_runs["two_devices"], "summary.json")))
    assert two["strategy"]["replicas"] == 2
    one_summary = json.load(open(os.path.join(jax_runs["unbroken"], "summary.json")))
    for a, b in zip(one_summary["stages"], two["stages"]):
        assert abs(a["final_loss"] - b["final_loss"]) <= 1e-4 * abs(a["final_loss"])
    one = load_weights(os.path.join(jax_runs["unbroken"], "backbone.keras"))
    split = load_weights(os.path.join(jax_runs["two_devices"], "backbone.keras"))
    # One step agrees to 1e-5 (test above); six steps at lr 0.2 grow the float32 rounding of the split sums to
    # ~2e-4 (measured). A wrong split (each device's own BatchNorm statistics, a halved gradient) moves far more.
    for a, b in zip(one, split):
        assert np.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_a_jax_trained_run_is_evaluated_by_evaluate_py_and_shown_by_the_demo(jax_runs, tmp_path):
    import json

    from conftest import synthetic_images
    from psl_keras.data.arrays import save_arrays

    data = str(tmp_path / "eval.npz")
    save_arrays(data, synthetic_images(48, 32, seed=5), np.arange(48) % 4, "synthetic", "all", num_classes=4)
    result = subprocess.run([sys.executable, "evaluate.py", "--probe", "knn", "--k", "5", "--runs",
                             f"jax={jax_runs['unbroken']}", "--dataset", f"arrays:{data}", "--output_dir",
                             str(tmp_path / "eval")], capture_output=True, text=True, timeout=600, cwd=REPO,
                            env=dict(os.environ, KERAS_BACKEND="tensorflow"))
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.load(open(tmp_path / "eval" / "results.json"))["tables"]["knn"]["rows"][0]
    assert row["run"] == "jax" and all(0.0 <= row[b] <= 1.0 for b in ("B1", "B2", "B3", "B4", "B5"))
    # The demo finds the run, its task and its three stages (heads and stage backbones load in safe mode).
    from apps import core

    (info,) = [i for i in core.discover_runs(os.path.dirname(jax_runs["unbroken"])) if i.name == "unbroken"]
    loaded = core.LoadedRun(info)
    assert loaded.task.name == "rotation" and [head.stage for head, _ in loaded.stages()] == [1, 2, 3]


def test_a_jax_trainer_built_in_python_records_the_jax_backend(tmp_path):
    # TrainConfig's backend defaults to tensorflow; a JaxTrainer run must still say it was made with JAX, or a
    # resume by the TensorFlow trainer would not be refused.
    out = run(f"""
import sys
sys.modules["tensorflow"] = None
from psl_keras.config import TrainConfig
from psl_keras.training.trainer import JaxTrainer
trainer = JaxTrainer(TrainConfig(output_dir={str(tmp_path / "run")!r}), verbose=0)
print("backend", trainer.config.backend)
""", "jax")
    assert out.strip().splitlines()[-1] == "backend jax"


# One E2E stage of 2 epochs (4 steps): one compilation per process.
MOCO = ["--task", "mocov2", "--mocov2_queue_size", "48", "--mocov2_shuffle_groups", "2", "--mode", "e2e",
        "--e2e_epochs", "2"]


def test_mocov2_trains_under_jax_without_tensorflow_and_checkpoints_its_key_encoder_and_queue(jax_runs, tmp_path):
    """A MoCo run from an array file with TensorFlow unimportable. (That a killed run resumes its task state
    bit-identically under JAX is tested with BYOL, through the same runtime and checkpoints.)"""
    dataset = ["--dataset", f"arrays:{os.path.join(os.path.dirname(jax_runs['unbroken']), 'train.npz')}"]
    run_dir = str(tmp_path / "moco")
    train_without_tf([*MOCO, *dataset, "--output_dir", run_dir])
    assert os.path.exists(os.path.join(run_dir, "backbone.keras"))
    # The checkpoints hold the key encoder and queue: after 4 steps of 16 keys in a queue of 48.
    with np.load(os.path.join(run_dir, "checkpoints", "ckpt-4.npz")) as last:
        counters = [int(last[k]) for k in last.files if k.startswith("task_state/") and last[k].shape == ()]
        queue = [last[k] for k in last.files if k.startswith("task_state/") and last[k].shape == (48, 128)]
    assert counters == [16, 4]  # queue pointer, steps
    np.testing.assert_allclose(np.linalg.norm(queue[0], axis=1), 1.0, rtol=1e-5)


def test_the_jax_moco_step_moves_the_key_encoder_by_momentum_and_fills_the_queue():
    """MoCo's stage state under the JAX step: k <- m k + (1 - m) q from the updated query weights, the batch's
    keys (computed with batch statistics over shuffled groups) into the queue's oldest slots."""
    out = run("""
import json, keras, numpy as np
from psl_keras import optim, stages
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.training.jax_step import JaxStageStep
from psl_keras.tasks import build_task
keras.utils.set_random_seed(0)
task = build_task("mocov2", 32, head_hidden=16, options={"queue_size": 32, "momentum": 0.9, "shuffle_groups": 2})
blocks = backbone_blocks(build_backbone("resnet18", 32, width=0.125))
stage = stages.stage_plan("psl", 3)[1]
head = task.build_head(stage.level, blocks[stage.last_block - 1].output.shape[-1], name="g")
model = stages.StageModel(blocks, stage, head, task, 8, weight_decay=1e-4)
step = JaxStageStep(model, optim.build_optimizer("sgd", 0.5, momentum=0.9))
state = model.task_state
pairs = [(k, q) for k, q in state.weight_pairs() if q.trainable]
before = [np.array(k.value) for k, _ in pairs]
views = np.random.default_rng(0).uniform(size=(8, 2, 32, 32, 3)).astype("float32")
features = model.frozen_features(keras.ops.convert_to_tensor(views))
keys = np.asarray(state.keys(features[1::2]))
alone = np.concatenate([np.asarray(state.keys(features[1::2][i:i + 1])) for i in range(8)])
new, sums = step.step(step.initial_state(), views, np.zeros(8, "int32"))
step.write_back(new)
worst = max(float(np.abs(np.array(k.value) - (0.9 * b + 0.1 * np.array(q.value))).max())
            for b, (k, q) in zip(before, pairs))
moved = sum(not np.allclose(np.array(q.value), b) for b, (_, q) in zip(before, pairs))
print("result", json.dumps({"worst": worst, "moved": moved, "pointer": int(state.queue_pointer.value),
      "steps": int(state.steps.value), "queue_is_keys": bool(np.allclose(np.array(state.queue.value)[:8], keys,
      atol=1e-5)), "batch_statistics": float(np.abs(keys - alone).max())}))
""", "jax")
    import json

    result = json.loads(out.split("result")[-1])
    assert result["worst"] < 1e-5 and result["moved"] > 10
    assert (result["pointer"], result["steps"]) == (8, 1) and result["queue_is_keys"]
    assert result["batch_statistics"] > 1e-2


def test_jax_backend_refuses_what_it_cannot_do(tmp_path):
    result = train_without_tf(["--dataset", "cifar10", "--output_dir", str(tmp_path / "r")], check=False)
    assert result.returncode == 2 and "python -m psl_keras.data" in result.stderr
    result = train_without_tf(["--knn_monitor", "--output_dir", str(tmp_path / "k")], check=False)
    assert result.returncode == 2 and "--knn_monitor is not available with --backend jax" in result.stderr


def test_the_jax_trainer_reads_a_warmup_schedule_compiled_once(tmp_path):
    """The learning rate shown each step: Keras evaluates a warm-up cosine eagerly, which under JAX traces it
    again on every call (160 ms here: SimCLR's steps on the H100 were several times their compiled step). The
    JAX trainer compiles the schedule once per stage; the value is the schedule's."""
    out = run(f"""
import types, keras
from psl_keras import optim
from psl_keras.config import TrainConfig
from psl_keras.training.trainer import JaxTrainer
trainer = JaxTrainer(TrainConfig(output_dir={str(tmp_path / "run")!r}), verbose=0)
trainer.runtime.stage_state = types.SimpleNamespace(sync_iterations=lambda: None)
schedule = optim.learning_rate_schedule("cosine", 0.6, 666, warmup_steps=74)
optimizer = optim.build_optimizer("lars", schedule)
optimizer.build([keras.Variable(keras.ops.ones((3, 3)))])
model = types.SimpleNamespace(optimizer=optimizer)
worst = 0.0
for step in (0, 1, 37, 74, 75, 300, 665, 700):
    optimizer.iterations.assign(step)
    worst = max(worst, abs(trainer.runtime.learning_rate(model) - float(schedule(step))))
print("result", worst, trainer.runtime._compiled_schedule[1]._cache_size())
""", "jax")
    worst, compiled = out.split("result")[-1].split()
    assert float(worst) < 1e-6 and int(compiled) == 1
