"""Every numeric and choice flag of train.py, evaluate.py and the demo refuses out-of-range values when the flags
are parsed, with one message naming the flag, the value and what is allowed.

The tables below hold values a user could type; a flag that a script defines but the table does not list fails
the test, so a new flag cannot skip its check.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# Values each flag must refuse. Numeric flags: below/above the range, non-numbers, NaN and infinities.
TRAIN = {
    "config": ["imagenet"], "task": ["rotate"], "on_bad_image": ["ignore"], "mode": ["pls"], "backbone": ["resnet19"],
    "stem": ["tiny"],
    "optimizer": ["adam"], "schedule": ["linear"], "strategy": ["mirror"], "backend": ["torch"],
    "width": ["0", "-1", "nan"], "image_size": ["0", "4", "8.5"], "head_hidden": ["0"],
    "epochs_per_stage": ["0", "-1"], "e2e_epochs": ["-1"], "steps_per_epoch": ["-1"],
    "batch_size": ["0", "-2", "1.5", "many"], "lr": ["-1", "0", "inf"], "momentum": ["-0.1", "1"],
    "weight_decay": ["-1"], "warmup_epochs": ["-1"], "shuffle_buffer": ["0"], "seed": ["-3", "4294967296"],
    "cpu_replicas": ["-1"], "checkpoint_every_steps": ["-5"], "knn_k": ["0"], "knn_temperature": ["0", "-inf"],
    "knn_bank_size": ["-1"],
    "rotation_crop_fraction": ["-0.1", "1.5"], "rotation_resize_shorter": ["-1"], "rotation_resample": ["nearest"],
    "jigsaw_permutation_seed": ["-1"], "jigsaw_crop_size": ["-1"], "jigsaw_tile_size": ["-1"],
    "jigsaw_tile_color_jitter": ["-0.1"], "jigsaw_tile_grayscale": ["1.5"], "jigsaw_tile_embedding": ["-1"],
    "jigsaw_geometry": ["tight"],
    "jigsaw_gapped_sizes": ["large"],
    **{f"{task}_{option}": values for task in ("simclr", "mocov2") for option, values in {
        "temperature": ["-1"], "projection_dim": ["0"], "strength": ["-1"], "blur_rate": ["2"],
        "sobel_rate": ["-0.5"]}.items()},
    "mocov2_queue_size": ["-1"], "mocov2_momentum": ["1", "-0.5"], "mocov2_shuffle_groups": ["0"],
    "byol_projection_dim": ["0"], "byol_strength": ["-1"], "byol_blur_rate": ["2"], "byol_sobel_rate": ["-0.5"],
    "byol_momentum": ["1", "-0.5"],
}
EVALUATE = {
    "probe": ["linear"], "on_bad_image": ["ignore"], "schedule": ["linear"], "strategy": ["mirror"],
    "epochs": ["0"], "steps_per_epoch": ["-1"], "batch_size": ["0"], "seed": ["-1"], "lr": ["0", "-1"],
    "weight_decay": ["-1"], "temperature": ["0"], "knn_train_examples": ["-1"], "cpu_replicas": ["-1"],
    "k": ["0", "20,0", "a", ""], "label_fraction": ["0", "0.1,1.5", "-0.1"],
}
DEMO = {"gallery_size": ["0"], "port": ["0", "65536"], "max_loaded_runs": ["0"], "max_upload_mb": ["-1", "0"]}

# Free-form strings (paths, names, split names, comma lists checked when the run is set up) and booleans.
UNCHECKED = {
    "train.py": {"dataset", "data_dir", "split", "output_dir", "stage_windows", "stage_epochs", "schedule_pattern",
                 "knn_split", "jigsaw_set_sizes", "resume", "sync_bn", "nesterov", "jit_compile",
                 "mixed_precision", "knn_monitor", "deterministic", "download", "revnet_recompute", "version"},
    "evaluate.py": {"runs", "dataset", "data_dir", "train_split", "eval_split", "output_dir", "schedule_pattern",
                    "blocks", "label_ids_file", "download", "resume_dir", "version"},
    "apps/demo.py": {"runs_dir", "data_dir", "gallery", "host", "share", "cache_dir", "download", "version"},
}


def flag_report(script, table):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "helpers", "flag_table.py"), script,
                             json.dumps(table)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script,table", [("train.py", TRAIN), ("evaluate.py", EVALUATE), ("apps/demo.py", DEMO)])
def test_every_numeric_and_choice_flag_refuses_out_of_range_values(script, table):
    report = flag_report(script, table)
    checked = {name for name, flag in report.items() if flag["kind"] in ("enum", "number", "numbers")}
    assert checked - set(table) == set(), f"{script}: flags without out-of-range values in the table"
    assert set(report) == checked | UNCHECKED[script], f"{script}: flags neither checked nor listed as free-form"
    for name, values in table.items():
        results = report[name]["results"]
        for value in values:
            message = results[value]
            assert message, f"{script} accepted --{name}={value}"
            assert message.startswith(f"flag --{name}={value}: "), message
            assert "must be" in message or "should be one of" in message, message
        if report[name]["default"] is not None:  # (evaluate.py's --lr defaults to "the protocol's")
            default = report[name]["default"].strip("'")
            assert results[default] is None, f"--{name} refuses its own default {default}: {results[default]}"


def test_a_bad_flag_ends_train_py_in_one_line_before_anything_runs():
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--batch_size", "0"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "flag --batch_size=0: must be an integer >= 1" in result.stderr


def test_library_configs_are_checked_too(tmp_path):
    # TrainConfig built in Python (no flags) gets the same ranges when the trainer is set up.
    from conftest import tiny_config
    from psl_keras.errors import PSLError
    from psl_keras.training.trainer import Trainer

    for field, value in [("batch_size", 0), ("width", 0.0), ("seed", -3), ("lr", float("nan")), ("mode", "pls")]:
        with pytest.raises(PSLError, match=f"--{field}="):
            Trainer(tiny_config(tmp_path, **{field: value}), verbose=0)
    with pytest.raises(PSLError, match="--rotation_crop_fraction=1.5: must be a number in"):
        Trainer(tiny_config(tmp_path, task_options={"crop_fraction": 1.5}), verbose=0)


def test_the_quick_preset_is_the_small_one_on_a_smaller_budget_for_every_task():
    """cifar10_quick: what the demo's runs use. Each task keeps its own cifar10_small settings (jigsaw's batch,
    the contrastive optimizers) where it names none for the quick preset; explicit flags still win."""
    from psl_keras.config import resolve_config
    from psl_keras.tasks import TASKS

    for task in TASKS:
        small, quick = resolve_config("cifar10_small", {"task": task}), resolve_config("cifar10_quick", {"task": task})
        assert (quick.width, quick.split, quick.epochs_per_stage, quick.knn_monitor) == (0.25, "train[:20000]", 3, True)
        assert (quick.optimizer, quick.lr, quick.weight_decay) == (small.optimizer, small.lr, small.weight_decay)
        assert quick.task_options == small.task_options
    assert resolve_config("cifar10_quick", {"task": "jigsaw"}).batch_size == 128
    assert resolve_config("cifar10_quick", {"task": "rotation", "batch_size": 64}).batch_size == 64
