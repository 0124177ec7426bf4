"""The shortcut probes themselves: AUC arithmetic, and that each probe finds a cue where one is known to exist
and reports chance where none can exist."""

import numpy as np

from psl_keras.tasks import shortcuts
from psl_keras.tasks import build_task


def test_auc_equals_counting_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 30).round(1)  # rounding makes ties
    pairs = [(x > y) + 0.5 * (x == y) for x in a for y in b]
    assert abs(shortcuts.auc(a, b) - np.mean(pairs)) < 1e-12
    assert shortcuts.separability(b, a) == shortcuts.separability(a, b) >= 0.5


def test_the_energy_ratio_sees_orientation():
    # A checkerboard alternates along both axes and is constant along both diagonals; horizontal stripes
    # alternate along one axis and along both diagonals alike.
    checkerboard = np.fromfunction(lambda y, x, c: (y + x) % 2, (16, 16, 3))[None]
    stripes = np.fromfunction(lambda y, x, c: y % 2, (16, 16, 3))[None]
    assert shortcuts.axis_over_diagonal_energy(checkerboard)[0] > 1e6
    assert abs(shortcuts.axis_over_diagonal_energy(stripes)[0] - 0.5) < 1e-9


def test_rotation_probe_finds_the_resampling_fingerprint_on_isotropic_noise():
    # Today's bilinear resampling: multiples of 90 and odd multiples of 45 degrees are told apart
    # on noise that has no orientation at all.
    task = build_task("rotation", 32, options={"resample": "bilinear"})
    result = shortcuts.rotation_probe(task, shortcuts.noise_images(60, 32, smooth=1.0))
    assert result["family"] > 0.9 and result["worst_pair"] >= result["family"] and result["chance"] == 0.5
    assert len(result["pairs"]) == 28


def test_jigsaw_edge_solver_solves_touching_tiles_and_is_at_chance_on_noise():
    touching = build_task("jigsaw", 32, options={"tile_size": 32, "set_sizes": "16,32,64",
                                                  "geometry": "standard"})  # tiles fill cells
    smooth = shortcuts.noise_images(24, 32, smooth=2.0)
    solved = shortcuts.jigsaw_edge_probe(touching, smooth, level=1, candidates=16)
    assert solved["chance"] == 1 / 16 and solved["accuracy"] > 0.9
    # Tiles far apart (13 px in 32-px cells, about 5 source pixels between neighbours) of i.i.d. noise: nothing
    # carries across the gap, so the solver is at chance (6.25%).
    gapped = build_task("jigsaw", 32, options={"set_sizes": "16,32,64", "tile_size": 13, "geometry": "standard"})
    white = shortcuts.jigsaw_edge_probe(gapped, shortcuts.noise_images(48, 32), level=1, candidates=16)
    assert white["accuracy"] < 0.2


def test_smooth_resampling_removes_the_rotation_fingerprint():
    # The target: every pair of angles at AUC <= 0.6 on content-free noise; the old bilinear fails it.
    noise = shortcuts.noise_images(60, 32, smooth=1.0)
    before = shortcuts.rotation_probe(build_task("rotation", 32, options={"resample": "bilinear"}), noise)
    fixed = build_task("rotation", 32)  # the default
    assert fixed.resample == "smooth"
    after = shortcuts.rotation_probe(fixed, noise)
    assert before["worst_pair"] > 0.9
    assert after["worst_pair"] <= 0.6


def test_gapped_jigsaw_tiles_defeat_the_edge_solver():
    # Smooth content (isotropic noise, like the low frequencies of photos): facing edges of the standard small
    # geometry match (over 50% of 16-way puzzles solved), those of the gapped one barely: 11-13% (2x chance)
    # measured over 1,800 puzzles, 200 per seed varying by +-2.5 points. The guard: under 3x chance.
    images = shortcuts.noise_images(200, 32, smooth=1.0)
    standard = build_task("jigsaw", 32, options={"set_sizes": "16,32,64", "geometry": "standard"})
    gapped = build_task("jigsaw", 32, options={"set_sizes": "16,32,64"})  # the default
    assert gapped.geometry == "gapped"
    assert (gapped.tile_size, gapped.cell_size) == (standard.tile_size, 2 * standard.tile_size)
    before = shortcuts.jigsaw_edge_probe(standard, images, level=1, candidates=16)
    after = shortcuts.jigsaw_edge_probe(gapped, images, level=1, candidates=16)
    assert before["accuracy"] > 0.5
    assert after["accuracy"] <= 3 * after["chance"]


def test_on_photographs_the_paper_jigsaw_geometry_is_solved_by_edges_and_the_default_is_not():
    # 224-px puzzles of real photographs (random 256-px crops of scikit-image's sample photos): photographs are
    # smooth across the paper's ~11-px gaps, so the edge solver picks the right one of 16 permutations in 41-51% of
    # puzzles (300 per seed, seeds 0-2); in the default gapped geometry (the paper's 64-px tiles in 128-px cells)
    # 7.7-14.0%, 10.7% pooled over those 900 = 1.7x chance. These 600 crops: 10.7%.
    photos = shortcuts.photograph_crops(600, seed=0)
    assert photos.shape == (600, 256, 256, 3) and photos.std() > 30  # real content, not a blank fallback
    paper = build_task("jigsaw", 224, options={"set_sizes": "16,32,64", "geometry": "standard"})
    default = build_task("jigsaw", 224, options={"set_sizes": "16,32,64"})
    assert (paper.tile_size, paper.cell_size) == (64, 75) and (default.tile_size, default.cell_size) == (64, 128)
    solved_paper = shortcuts.jigsaw_edge_probe(paper, photos[:150], level=1, candidates=16)
    solved_default = shortcuts.jigsaw_edge_probe(default, photos, level=1, candidates=16)
    assert solved_paper["accuracy"] >= 5 * solved_paper["chance"]
    assert solved_default["accuracy"] <= 2 * solved_default["chance"]


def test_runs_record_every_task_option_and_old_runs_keep_the_old_preprocessing(tmp_path):
    # A run made before these options existed recorded no resample option and trained with bilinear: resuming it (or
    # reloading it in evaluate.py and the demo) must keep bilinear, not switch to the new default mid-run.
    import pytest
    from conftest import tiny_config
    from psl_keras.errors import PSLError
    from psl_keras.rundir import run_task
    from psl_keras.rundir import RunDirectory, RunState
    from psl_keras.training.trainer import Trainer

    fresh = Trainer(tiny_config(tmp_path / "new"), verbose=0)
    assert fresh.config.task_options["resample"] == "smooth"
    assert set(fresh.config.task_options) == {"crop_fraction", "resize_shorter", "resample"}

    old_config = tiny_config(tmp_path / "old").to_dict()
    old_config["task_options"] = {}
    old_dir = RunDirectory(old_config["output_dir"])
    old_dir.prepare()
    old_dir.write_state(RunState(old_config))
    resumed = Trainer(tiny_config(tmp_path / "old"), resume=True, verbose=0)
    assert resumed.config.task_options["resample"] == "bilinear" and resumed.task.resample == "bilinear"
    with pytest.raises(PSLError, match="resample"):  # asking for the new behaviour on an old run is a mismatch
        Trainer(tiny_config(tmp_path / "old", task_options={"resample": "smooth"}), resume=True, verbose=0).train()

    class SavedRun:
        name, summary = "old", {"config": old_config}
    assert run_task(SavedRun()).resample == "bilinear"
