import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from psl_keras import stages
from psl_keras.backbones import backbone_blocks, build_backbone
from psl_keras.errors import PSLError
from psl_keras.tasks import build_task, complete_options
from psl_keras.tasks import jigsaw

from conftest import synthetic_images


def assemble_tiles(tiles):
    """Nine tiles that fill their cells, row by row, -> one image."""
    tiles = np.asarray(tiles)
    rows = [np.concatenate(list(tiles[r * jigsaw.GRID:(r + 1) * jigsaw.GRID]), axis=1) for r in range(jigsaw.GRID)]
    return np.concatenate(rows, axis=0)


def raw_puzzle(task, image, seed, level=3):
    """(the puzzle before the per-tile changes and normalisation, its label): the grid tiles in puzzle order."""
    image = np.asarray(image)
    params = task.sample(tf.constant(seed, tf.int64), level, image.shape[:2])
    tiles = task.tiles(tf.constant(image)[None], tf.nest.map_structure(lambda p: p[None], params))[0].numpy()
    label = int(params["label"])
    return tiles[task.level_permutations(level)[label]], label


@pytest.fixture(scope="module")
def paper_sets(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("perm_cache"))
    return {size: jigsaw.permutation_set(size, seed=0, directory=directory) for size in (500, 1000, 2000)}


def test_sets_nest_are_unique_permutations_and_far_apart(paper_sets):
    c1, c2, c3 = paper_sets[500], paper_sets[1000], paper_sets[2000]
    np.testing.assert_array_equal(c1, c3[:500])  # generated independently, yet prefixes: nested
    np.testing.assert_array_equal(c2, c3[:1000])
    assert len({tuple(p) for p in c3}) == 2000
    assert all(sorted(p) == list(range(9)) for p in c3)
    for c in (c1, c2, c3):
        minimum, mean = jigsaw.hamming_stats(c)
        # The paper keeps the mean pairwise Hamming distance ~8.0 in every set.
        assert abs(mean - 8.0) < 0.1 and minimum >= 4, (minimum, mean)


def test_sets_are_deterministic_per_seed_and_cached(tmp_path):
    a = jigsaw.maximal_hamming_permutations(30, seed=1)
    np.testing.assert_array_equal(a, jigsaw.maximal_hamming_permutations(30, seed=1))
    assert not np.array_equal(a, jigsaw.maximal_hamming_permutations(30, seed=2))
    first = jigsaw.permutation_set(30, seed=1, directory=str(tmp_path))
    cached = tmp_path / "jigsaw_permutations_30_seed1.npy"
    assert cached.exists()
    np.save(cached, first[::-1])  # a cached set is read back, not regenerated
    np.testing.assert_array_equal(jigsaw.permutation_set(30, seed=1, directory=str(tmp_path)), first[::-1])


def test_puzzle_decodes_back_to_the_crop_with_its_label(tmp_path, monkeypatch):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    # Tiles that fill their cells and a crop that is the whole image: the puzzle is the image, shuffled.
    task = build_task("jigsaw", 32, options={"set_sizes": "5,10,20", "crop_size": 96, "tile_size": 32})
    task.resize_shorter = 96
    image = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    orientations = []
    for i in range(8):
        puzzle, label = raw_puzzle(task, image, [4, i])
        # What the network sees is that puzzle, each tile standardised on its own.
        seen, seen_label = task.make_example(tf.constant(image), tf.constant([4, i], tf.int64), 3)
        mean, var = puzzle.mean(axis=(1, 2), keepdims=True), puzzle.var(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(seen.numpy(), (puzzle - mean) / np.sqrt(var + 1e-3) * 0.225 + 0.45, atol=1e-4)
        assert int(seen_label) == label
        permutation = task.level_permutations(3)[label]
        tiles = np.empty_like(puzzle)
        tiles[permutation] = puzzle  # position k shows grid tile permutation[k]
        decoded = np.round(assemble_tiles(tiles) * 255).astype(np.uint8)
        orientations.append("upright" if np.array_equal(decoded, image) else
                            "mirrored" if np.array_equal(decoded, image[:, ::-1]) else "neither")
    assert set(orientations) == {"upright", "mirrored"}, orientations  # crops are flipped, some of them


def test_preprocess_shapes_labels_and_tile_normalisation(tmp_path, monkeypatch):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    task = build_task("jigsaw", 32, options={"set_sizes": "5,10,20", "tile_grayscale": 0.5,
                                             "tile_color_jitter": 0.1})
    # Small images: 27-px tiles in 54-px cells (the gapped geometry); the old one stays reachable.
    assert (task.crop_size, task.cell_size, task.tile_size, task.resize_shorter) == (162, 54, 27, 184)
    standard = build_task("jigsaw", 32, options={"set_sizes": "5,10,20", "geometry": "standard"})
    assert (standard.crop_size, standard.cell_size, standard.tile_size, standard.resize_shorter) == (96, 32, 27, 109)
    image = tf.constant(synthetic_images(1, seed=3)[0])
    labels = set()
    for i in range(80):  # every one of the 10 labels appears (each misses 80 draws with probability 2e-4)
        puzzle, label = task.preprocess(image, tf.constant([0, i], tf.int64), 2)
        assert puzzle.shape == (9, 27, 27, 3)
        labels.add(int(label))
        means = puzzle.numpy().mean(axis=(1, 2))
        assert np.allclose(means, 0.45, atol=1e-3)  # every tile brought to the same mean
    assert labels == set(range(10))
    # 224 px: the paper's 64-px tiles, in 128-px cells by default, in its 75-px cells with geometry=standard; a run
    # saved before gapped 224-px tiles (geometry=gapped recorded, gapped_sizes not) keeps the paper's cells.
    large = build_task("jigsaw", 224, options={"set_sizes": "5,10,20"})
    assert (large.resize_shorter, large.crop_size, large.cell_size, large.tile_size) == (437, 384, 128, 64)
    paper = build_task("jigsaw", 224, options={"set_sizes": "5,10,20", "geometry": "standard"})
    assert (paper.resize_shorter, paper.crop_size, paper.cell_size, paper.tile_size) == (256, 225, 75, 64)
    saved = complete_options("jigsaw", {"set_sizes": "5,10,20", "geometry": "gapped"}, saved=True)
    old = build_task("jigsaw", 224, options=saved)
    assert (old.resize_shorter, old.crop_size, old.cell_size, old.tile_size) == (256, 225, 75, 64)
    assert build_task("jigsaw", 32, options=saved).cell_size == 54  # small images were gapped already
    with pytest.raises(PSLError, match="jigsaw_"):
        build_task("jigsaw", 32, options={"set_sizes": "10,5,20"})


def test_head_sees_tiles_only_through_shared_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    keras.utils.set_random_seed(0)
    task = build_task("jigsaw", 32, head_hidden=8, options={"set_sizes": "5,10,20"})
    blocks = backbone_blocks(build_backbone("resnet18", 32, width=0.125))
    stage = stages.stage_plan("psl", 3)[0]
    head = task.build_head(1, blocks[2].output.shape[-1], name="g1")
    model = stages.StageModel(blocks, stage, head, task, global_batch_size=2)
    embed = keras.Model(head.input, head.get_layer("g1_tile_relu").output)

    def concatenated(puzzles):
        features = model.frozen_features(puzzles)
        for block in model.trained_blocks:
            features = block(features, training=False)
        return keras.ops.convert_to_numpy(embed(features, training=False)).reshape(len(puzzles), -1)

    puzzles = np.random.default_rng(1).uniform(size=(2, 9, 27, 27, 3)).astype("float32")
    base = concatenated(puzzles)
    swapped = puzzles.copy()
    swapped[0, [0, 4]] = swapped[0, [4, 0]]
    after = concatenated(swapped).reshape(2, 9, -1)
    before = base.reshape(2, 9, -1)
    np.testing.assert_allclose(after[0, [4, 0]], before[0, [0, 4]], atol=1e-5)  # slots follow the tiles
    np.testing.assert_allclose(after[0, 1:4], before[0, 1:4], atol=1e-5)
    np.testing.assert_allclose(after[1], before[1], atol=1e-5)
    alone = concatenated(np.repeat(puzzles[:1, 2:3], 9, axis=1)).reshape(9, -1)
    np.testing.assert_allclose(alone[0], before[0, 2], atol=1e-5)  # a tile's embedding ignores the others
    logits = model(puzzles, training=False)
    assert tuple(logits.shape) == (2, 5)


def test_jigsaw_trains_in_every_mode(tmp_path, monkeypatch, synthetic_source):
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    from psl_keras.training.trainer import Trainer
    from conftest import tiny_config

    for mode in ("psl", "e2e"):
        config = tiny_config(tmp_path / mode, task="jigsaw", mode=mode, batch_size=8, e2e_epochs=1,
                             task_options={"set_sizes": "4,8,16"})
        summary = Trainer(config, source=synthetic_source, verbose=0).train()
        assert len(summary["stages"]) == (3 if mode == "psl" else 1)
        assert all(math.isfinite(s["final_loss"]) for s in summary["stages"])
        assert summary["task"]["set_sizes"] == [4, 8, 16]


def test_the_task_trains_with_nested_prefix_sets_far_apart(tmp_path, monkeypatch):
    """The ladder the task itself uses (not just the generator): C1 = C3[:|C1|], C2 = C3[:|C2|], every
    set far apart in Hamming distance, and every level's puzzles labelled by that level's set."""
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    task = build_task("jigsaw", 32, options={"set_sizes": "40,80,160"})
    c1, c2, c3 = (task.level_permutations(level) for level in (1, 2, 3))
    assert [len(c) for c in (c1, c2, c3)] == [40, 80, 160]
    np.testing.assert_array_equal(c1, c3[:40])
    np.testing.assert_array_equal(c2, c3[:80])
    assert len({tuple(p) for p in c3}) == 160 and all(sorted(p) == list(range(9)) for p in c3)
    # Greedy maximal-Hamming choice: 160 uniformly random permutations would have pairs 2 apart.
    assert min(jigsaw.hamming_stats(c)[0] for c in (c1, c2, c3)) >= 6
    image = tf.constant(synthetic_images(1, seed=2)[0])
    for level in (1, 2, 3):
        labels = {int(task.preprocess(image, tf.constant([level, i], tf.int64), level)[1]) for i in range(60)}
        assert labels <= set(range(task.num_classes(level))) and len(labels) > task.num_classes(level) // 4


def _coordinate_image(side):
    """uint8 image whose red channel is the column and green channel the row of each pixel."""
    y, x = np.mgrid[:side, :side]
    return np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)


def test_tiles_sit_at_random_positions_inside_their_own_cells(tmp_path, monkeypatch):
    """Shortcut guard: each tile lies wholly inside its 1/3 x 1/3 cell (a gap to its neighbours) at a
    position drawn per tile, so facing edges do not line up. Read back from a coordinate image."""
    monkeypatch.setenv("PSL_KERAS_CACHE", str(tmp_path))
    task = build_task("jigsaw", 32, options={"set_sizes": "5,10,20", "crop_size": 96, "tile_size": 24})
    task.resize_shorter = 96  # the crop is the whole image: tile coordinates are crop coordinates
    image = _coordinate_image(96)
    offsets = set()
    for i in range(12):
        puzzle, label = raw_puzzle(task, image, [8, i])
        tiles = np.round(puzzle * 255).astype(int)
        permutation = task.level_permutations(3)[int(label)]
        for position, cell in enumerate(permutation):  # puzzle slot `position` shows grid cell `cell`
            row, col = divmod(int(cell), 3)
            ys, xs = tiles[position, :, 0, 1], tiles[position, 0, :, 0]
            if xs[0] > xs[-1]:  # a flipped crop: crop column = 95 - source column
                xs = 95 - xs
            assert row * 32 <= ys.min() and ys.max() < (row + 1) * 32, (i, position)
            assert col * 32 <= xs.min() and xs.max() < (col + 1) * 32, (i, position)
            offsets.add((int(ys.min() - row * 32), int(xs.min() - col * 32)))
    assert len(offsets) > 20  # 12 puzzles x 9 tiles over a 9x9 grid of possible offsets
