"""Keras on JAX: the model code imports without TensorFlow, and a JAX stage step trains exactly the
stage's blocks and head, within float32 rounding of the TF step from the same weights and batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

import psl_keras
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


TASK_OPTIONS = {"jigsaw": {"set_sizes": "4,8,16", "tile_color_jitter": 0.1, "tile_grayscale": 0.5}}


def test_model_code_and_every_tasks_examples_run_without_tensorflow_and_equal_the_tf_data_ones(tmp_path):
    """Under JAX with TensorFlow unimportable: the models build, and each task's one implementation of its
    examples, fed the choices tf.data drew for 4 images, makes what the tf.data pipeline made from them (the
    crop, flip, rotation, tile cuts, per-tile normalisation, permutation, colour jitter, grayscale, blur and
    Sobel run in keras.ops on both backends). The JAX runtime's own draws cover each task's labels."""
    import tensorflow as tf

    from conftest import synthetic_images
    from psl_keras.tasks import TASKS

    images = synthetic_images(4, 32, seed=2)
    np.save(tmp_path / "images.npy", images)
    expected = {}
    for name in TASKS:
        task = build_task(name, 32, options=TASK_OPTIONS.get(name))
        data = tf.data.Dataset.from_tensor_slices(images).enumerate().map(
            lambda i, image: task.preprocess(image, tf.stack([tf.constant(7, tf.int64), i]), 3)).batch(4)
        if task.batch_transform(3):
            data = data.map(task.batch_transform(3))
        params = [task.sample(tf.constant([7, i], tf.int64), 3, (32, 32)) for i in range(4)]
        params = tf.nest.map_structure(lambda *p: np.stack([np.asarray(x) for x in p]), *params)
        (inputs, labels), = list(data)
        expected[name] = (params, inputs.numpy(), labels.numpy())
        np.savez(tmp_path / f"{name}.npz", **{"/".join(map(str, path)): value for path, value in
                                               _flatten(params)})
    out = run(f"""
import sys
for name in ("tensorflow", "tensorflow_datasets", "keras_cv"):
    sys.modules[name] = None  # any import of them now fails
import jax
import keras
import numpy as np
from psl_keras import stages
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.tasks import TASKS, build_task
from psl_keras.data import arrays  # array datasets load with NumPy alone
backbone = build_backbone("resnet18", 32, width=0.125)
images = np.load("{tmp_path / 'images.npy'}")
options = {TASK_OPTIONS!r}
for name in TASKS:
    task = build_task(name, 32, head_hidden=8, options=options.get(name))
    for stage in stages.stage_plan("psl", 3):
        head = task.build_head(stage.level, backbone_blocks(backbone)[stage.last_block - 1].output.shape[-1], "g")
        stages.StageModel(backbone_blocks(backbone), stage, head, task, 8)
    flat = np.load("{tmp_path}/" + name + ".npz")
    params = {{}}
    for key in flat.files:
        *parents, leaf = key.split("/")
        node = params
        for parent in parents:
            node = node.setdefault(parent, {{}})
        node[leaf] = flat[key]
    inputs, labels = task.prepare(images, params, 3)
    np.save("{tmp_path}/" + name + "_jax.npy", np.asarray(task.finish(inputs, params, 3)))
    if task.has_labels:
        seeds = np.random.default_rng(0).integers(0, 2**32, (64, 2), dtype=np.uint32)
        drawn = jax.vmap(lambda seed: task.sample(seed, 1, (32, 32)))(seeds)
        print(name, len(set(np.asarray(drawn["label"]).tolist())) == task.num_classes(1))
# The runtime's batches: copies of one image, each example with its own seed, so every pair of views differs.
from types import SimpleNamespace as NS
from psl_keras.training.jax_runtime import JaxRuntime
runtime = JaxRuntime()
runtime.device_images = jax.numpy.asarray(np.repeat(images[:1], 8, axis=0))
views, _ = next(runtime.epoch_batches(NS(num_examples=8), build_task("simclr", 32), NS(batch_size=8, seed=0),
                                      NS(index=0, level=3), 0))
print("examples", len({{np.asarray(v).tobytes() for v in views}}) == 8)
print(keras.backend.backend(), "built")
""", "jax")
    assert out.strip().endswith("jax built") and "False" not in out and out.count("True") == 3, out
    for name, (params, inputs, labels) in expected.items():
        made = np.load(tmp_path / f"{name}_jax.npy")
        assert made.shape == inputs.shape and np.abs(made - inputs).max() < 2e-4, name
        if name != "rotation":  # the choices differ from image to image (rotation's labels are 8-way)
            assert len(np.unique(np.asarray(params["crop"]["box"] if "crop" in params else params["corner"]),
                                 axis=0)) > 1, name


def _flatten(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, path + (key,))
    else:
        yield path, tree


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
    assert summary["machine"]["versions"]["psl_keras"] == psl_keras.__version__
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
    # Stage 1 (two steps from the same weights, the same batches) agrees to float rounding: loss measured 1.4e-5
    # (relative), weights 9e-4; a wrong split (one device's share, per-device BatchNorm statistics) changes the
    # very first loss. Later stages are not compared: at lr 0.2 on batches of 16 this tiny network (8 channels in
    # its first blocks) turns last-bit differences into different trajectories within a few steps (measured: its
    # single step agrees to 1e-7, test above, yet stage 3 ends 3% apart on this run's examples).
    first_one, first_two = one_summary["stages"][0]["final_loss"], two["stages"][0]["final_loss"]
    assert abs(first_one - first_two) <= 1e-4 * abs(first_one)
    one = load_weights(os.path.join(jax_runs["unbroken"], "stage1_backbone.keras"))
    split = load_weights(os.path.join(jax_runs["two_devices"], "stage1_backbone.keras"))
    for a, b in zip(one, split):
        assert np.allclose(a, b, rtol=1e-2, atol=1e-2)


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
    from psl_keras.demo import core

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
