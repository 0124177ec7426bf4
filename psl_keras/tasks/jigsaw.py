"""Multi-level jigsaw puzzles (Noroozi & Favaro 2016; protocol of Goyal et al. 2019; PSL Table 1).

Levels: permutation sets C1 within C2 within C3 (default sizes 500 / 1000 / 2000) over the 9! orderings of a
3x3 grid, chosen greedily for maximal Hamming distance: each new permutation maximises its minimum
distance to those already chosen (ties go to the larger total distance, then to the seeded generator).
C1 and C2 are prefixes of C3, so the sets nest by construction.

Pipeline (ImageNet size): shorter side to 256, random 225x225 crop, flip p=0.5, a 3x3 grid of 75x75 cells,
a random 64x64 tile inside each cell (the gaps stop the network matching edges), every tile normalised
on its own (mean and contrast carry no position cue), the tiles reordered by a permutation drawn uniformly
from the level's set; the label is that permutation's index. Small images are upsampled first so that the
tiles keep a useful size (CIFAR: 32 -> 110, 96x96 crops, 32x32 cells, 27x27 tiles).

Network (Goyal et al.'s ResNet-50 design): the nine tiles go through the stage's blocks as one siamese
batch (shared weights); each tile's features are pooled and embedded by the same layers; the embeddings
are concatenated in tile order and only the final classifier sees them together.
"""

import itertools
import math
import os
import time

import keras
import numpy as np
from keras import layers, ops

from psl_keras.atomic import atomic_path
from psl_keras.lazy import tf
from psl_keras.ranges import fraction, non_negative_int
from psl_keras.tasks.base import Task
from psl_keras.tasks.rotation import resize_shorter_side

GRID = 3
NUM_TILES = GRID * GRID
DEFAULT_SET_SIZES = (500, 1000, 2000)


def all_permutations():
    """The 9! orderings of the tiles, as uint8 [362880, 9] in lexicographic order."""
    return np.array(list(itertools.permutations(range(NUM_TILES))), dtype=np.uint8)


def maximal_hamming_permutations(count, seed=0, candidates=None):
    """`count` permutations chosen greedily for maximal minimum Hamming distance (vectorised, seconds)."""
    candidates = all_permutations() if candidates is None else candidates
    if not 1 <= count <= len(candidates):
        raise ValueError(f"Cannot choose {count} permutations out of {len(candidates)}.")
    # matches[j, v, k] is 1 where candidate k puts tile v at position j: the distance of every candidate
    # to a permutation q is then 9 - sum_j matches[j, q[j]], nine vector additions instead of a 9!x9 compare.
    matches = np.stack([np.stack([candidates[:, j] == v for v in range(NUM_TILES)]) for j in range(NUM_TILES)])
    matches = matches.astype(np.int8)
    rng = np.random.default_rng(seed)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = rng.integers(len(candidates))
    min_distance = np.full(len(candidates), NUM_TILES + 1, dtype=np.int8)
    total_distance = np.zeros(len(candidates), dtype=np.int32)
    for i in range(count):
        if i:
            best = np.flatnonzero(min_distance == min_distance.max())
            best = best[total_distance[best] == total_distance[best].max()]
            chosen[i] = best[rng.integers(len(best))]
        q = candidates[chosen[i]]
        same = matches[0, q[0]].copy()
        for j in range(1, NUM_TILES):
            same += matches[j, q[j]]
        distance = NUM_TILES - same
        np.minimum(min_distance, distance, out=min_distance)
        total_distance += distance
        min_distance[chosen[i]] = -1  # never choose a permutation twice
    return candidates[chosen]


def hamming_stats(permutations):
    """(minimum, mean) pairwise Hamming distance of a permutation set."""
    p = np.asarray(permutations)
    distances = (p[:, None, :] != p[None, :, :]).sum(-1)
    upper = distances[np.triu_indices(len(p), k=1)]
    return int(upper.min()), float(upper.mean())


def cache_dir():
    return os.environ.get("PSL_KERAS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "psl_keras"))


def permutation_set(size, seed=0, directory=None):
    """The first `size` maximal-Hamming permutations for `seed`, generated once and cached as .npy."""
    directory = directory or cache_dir()
    path = os.path.join(directory, f"jigsaw_permutations_{size}_seed{seed}.npy")
    if os.path.exists(path):
        try:
            permutations = np.load(path)
            if permutations.shape == (size, NUM_TILES):
                return permutations
        except (OSError, ValueError):
            pass  # a damaged cache file is regenerated below
    permutations = maximal_hamming_permutations(size, seed)
    with atomic_path(path) as tmp:
        np.save(tmp, permutations)
    return permutations


def cut_tiles(crop, cell, tile, offsets):
    """Cuts a [3*cell, 3*cell, C] crop into nine [tile, tile, C] tiles, row by row.

    `offsets` [9, 2] int32 are each tile's (y, x) position inside its cell, in [0, cell - tile].
    """
    tiles = []
    for index in range(NUM_TILES):
        row, col = divmod(index, GRID)
        y = row * cell + offsets[index, 0]
        x = col * cell + offsets[index, 1]
        tiles.append(crop[y:y + tile, x:x + tile])
    return tf.stack(tiles)


def assemble_tiles(tiles):
    """The inverse of `cut_tiles` for tiles that fill their cells: nine tiles, row by row, -> one image."""
    tiles = np.asarray(tiles)
    rows = [np.concatenate(list(tiles[r * GRID:(r + 1) * GRID]), axis=1) for r in range(GRID)]
    return np.concatenate(rows, axis=0)


def normalize_tile(tiles, eps=1e-3):
    """Per-tile, per-channel standardisation, mapped back to the [0, 1]-image range the backbone expects.

    Each tile gets the same mean (0.45) and spread (0.225): brightness and contrast differences between
    tiles, a low-level cue to their position, are removed.
    """
    mean, variance = tf.nn.moments(tiles, axes=[1, 2], keepdims=True)
    return (tiles - mean) / tf.sqrt(variance + eps) * 0.225 + 0.45


class JigsawTask(Task):
    """Predict which permutation of the level's set reordered the nine tiles."""

    name = "jigsaw"
    # Nine tiles per image make a step ~9x a rotation step: a smaller batch and lr to match.
    PRESETS = {"cifar10_small": {"batch_size": 128, "lr": 0.05}}
    GEOMETRIES = ("standard", "gapped")
    OPTIONS = {
        "set_sizes": ("500,1000,2000", "Sizes of the nested permutation sets C1,C2,C3."),
        "permutation_seed": (0, "Seed of the permutation-set generation.", non_negative_int()),
        "crop_size": (0, "Side of the 3x3 puzzle crop (0: 225 at 224 px; 3*image_size at <=64 px).",
                      non_negative_int()),
        "tile_size": (0, "Side of each tile (0: cell*64/75).", non_negative_int()),
        "tile_color_jitter": (0.0, "Per-tile random colour shift, +- this much per channel.", fraction()),
        "tile_grayscale": (0.0, "Probability of turning a tile grey.", fraction()),
        "tile_embedding": (0, "Per-tile embedding width in the head (0: head_hidden).", non_negative_int()),
        "geometry": ("gapped", "gapped: at <=64 px tiles of the same size in cells twice as large, so neighbours "
                               "are ~5 source pixels apart; standard: the geometry of runs made before gapped tiles.",
                     GEOMETRIES),
    }
    LEGACY_OPTIONS = {"geometry": "standard"}

    def __init__(self, image_size, head_hidden=256, sync_bn=False, set_sizes=DEFAULT_SET_SIZES,
                 permutation_seed=0, resize_shorter=None, crop_size=None, tile_size=None,
                 tile_color_jitter=0.0, tile_grayscale=0.0, tile_embedding=None, geometry="gapped"):
        super().__init__(image_size, head_hidden, sync_bn)
        if geometry not in self.GEOMETRIES:
            raise ValueError(f"geometry must be one of {', '.join(self.GEOMETRIES)}, got {geometry!r}.")
        self.geometry = geometry
        if isinstance(set_sizes, str):
            set_sizes = set_sizes.split(",")
        sizes = tuple(int(s) for s in set_sizes)
        if len(sizes) != self.num_levels or list(sizes) != sorted(sizes) or sizes[0] < 2:
            raise ValueError(f"Jigsaw set sizes must be {self.num_levels} increasing counts >= 2, got {sizes}.")
        if sizes[-1] > math.factorial(NUM_TILES):
            raise ValueError(f"At most 9! = {math.factorial(NUM_TILES)} permutations exist.")
        self.set_sizes = sizes
        self.permutation_seed = int(permutation_seed)
        small = self.image_size <= 64
        # Proportions of the paper's 256 -> 225 crop -> 75 cells -> 64 tiles, upsampled for small images.
        crop = int(crop_size or (3 * self.image_size if small else round(self.image_size * 225 / 224)))
        if small and self.geometry == "gapped" and not crop_size:
            # At the standard small geometry facing tiles are ~1.5 source pixels apart, and an edge-matching
            # solver with no learning solves 50% of 16-way puzzles (chance 6%). The same tiles in cells twice
            # their size (the image upsampled more) leave ~5 source pixels: 11% (benchmarks/shortcuts.py).
            tile_size = int(tile_size or round(self.image_size * 64 / 75))
            crop = 2 * tile_size * GRID
        self.cell_size = crop // GRID
        self.crop_size = self.cell_size * GRID
        self.resize_shorter = int(resize_shorter or round(self.crop_size * 256 / 225))
        self.tile_size = int(tile_size or round(self.cell_size * 64 / 75))
        if not 0 < self.tile_size <= self.cell_size:
            raise ValueError(f"tile_size must be in (0, cell={self.cell_size}], got {self.tile_size}.")
        if self.resize_shorter < self.crop_size:
            raise ValueError(f"resize_shorter ({self.resize_shorter}) must be >= crop ({self.crop_size}).")
        self.tile_color_jitter = float(tile_color_jitter)
        self.tile_grayscale = float(tile_grayscale)
        self.tile_embedding = int(tile_embedding or head_hidden)
        self._permutations = None

    @property
    def permutations(self):
        """C3 as uint8 [|C3|, 9]; C_i is its first |C_i| rows."""
        if self._permutations is None:
            self._permutations = permutation_set(self.set_sizes[-1], self.permutation_seed)
        return self._permutations

    def level_permutations(self, level):
        return self.permutations[: self.set_sizes[level - 1]]

    def num_classes(self, level):
        return self.set_sizes[level - 1]

    def describe_level(self, level):
        return f"jigsaw C{level}: {self.num_classes(level)} permutations"

    # --- data -----------------------------------------------------------------------------------------
    def grid_tiles(self, image, seed):
        """Random crop, flip and tile positions of one float image -> tiles [9, t, t, 3] in grid order."""
        crop_seed, flip_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        image = resize_shorter_side(image, self.resize_shorter)
        crop = tf.image.stateless_random_crop(image, [self.crop_size, self.crop_size, 3], crop_seed)
        crop = tf.image.stateless_random_flip_left_right(crop, flip_seed)
        offsets = tf.random.stateless_uniform(
            [NUM_TILES, 2], offset_seed, minval=0, maxval=self.cell_size - self.tile_size + 1, dtype=tf.int32
        )
        return cut_tiles(crop, self.cell_size, self.tile_size, offsets)

    def _tile_augment(self, tiles, seed):
        if self.tile_color_jitter:
            jitter = tf.random.stateless_uniform(
                [NUM_TILES, 1, 1, 3], seed, minval=-self.tile_color_jitter, maxval=self.tile_color_jitter
            )
            tiles = tiles + jitter
        if self.tile_grayscale:
            gray_seed = tf.random.experimental.stateless_fold_in(seed, 1)
            gray = tf.random.stateless_uniform([NUM_TILES, 1, 1, 1], gray_seed) < self.tile_grayscale
            tiles = tf.where(gray, tf.image.rgb_to_grayscale(tiles) * tf.ones([1, 1, 1, 3]), tiles)
        return tiles

    def preprocess(self, image, seed, level):
        return self.make_puzzle(image, seed, level)

    def make_example(self, image, seed, level, label=None):
        """`preprocess` with the permutation chosen (its index in C_level), e.g. by the demo."""
        return self.make_puzzle(image, seed, level, label=label)

    def make_puzzle(self, image, seed, level, normalize=True, label=None):
        """(puzzle [9, t, t, 3], label) for one uint8 image; `normalize=False` keeps the raw tiles."""
        tile_seed, label_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        image = tf.image.convert_image_dtype(image, tf.float32)
        tiles = self.grid_tiles(image, tile_seed)
        if normalize:
            tiles = normalize_tile(self._tile_augment(tiles, augment_seed))
        if label is None:
            label = tf.random.stateless_uniform(
                [], label_seed, minval=0, maxval=self.num_classes(level), dtype=tf.int32
            )
        label = tf.cast(label, tf.int32)
        permutation = tf.gather(tf.constant(self.level_permutations(level), tf.int32), label)
        # Position i of the puzzle shows tile permutation[i] of the grid.
        return tf.gather(tiles, permutation), label

    # --- Keras on JAX: puzzles made on the device (the JAX trainer jit-compiles array_examples) --------------
    def draw_array_params(self, rng, count, level):
        """Per example, what `make_puzzle` draws: the crop's corner, a flip, each tile's place in its cell, the
        permutation's index (and the tile jitter / grayscale choices where those options are on)."""
        params = {"corners": rng.integers(0, self.resize_shorter - self.crop_size + 1, (count, 2)).astype("int32"),
                  "flips": rng.integers(0, 2, count).astype("int32"),
                  "offsets": rng.integers(0, self.cell_size - self.tile_size + 1, (count, NUM_TILES, 2)).astype("int32"),
                  "labels": rng.integers(0, self.num_classes(level), count).astype("int32")}
        if self.tile_color_jitter:
            params["jitter"] = rng.uniform(-self.tile_color_jitter, self.tile_color_jitter,
                                           (count, NUM_TILES, 3)).astype("float32")
        if self.tile_grayscale:
            params["gray"] = (rng.uniform(size=(count, NUM_TILES)) < self.tile_grayscale).astype("float32")
        return params

    def array_examples(self, images, params, level):
        """`make_puzzle` for a batch of same-size square images, in `keras.ops` only (tested against it): the
        resize, crop, flip and tile cuts are one gather of pixel indices, then the per-tile normalisation and
        the permutation. images uint8 [B, H, H, 3] -> (puzzles [B, 9, t, t, 3], labels [B])."""
        images = ops.convert_to_tensor(images)
        count, height, width = images.shape[0], images.shape[1], images.shape[2]
        if height != width:
            raise NotImplementedError("array_examples serves square images (resize them when exporting).")
        size, cell, tile = self.resize_shorter, self.cell_size, self.tile_size
        resized = ops.image.resize(ops.cast(images, "float32") / 255.0, (size, size), interpolation="bilinear")
        # Tile i's pixel (ty, tx) sits at crop position (row * cell + oy + ty, col * cell + ox + tx) of the
        # flipped crop; a flip reads the crop's column (crop - 1 - x).
        rows = ops.convert_to_tensor([i // GRID for i in range(NUM_TILES)], "int32")
        cols = ops.convert_to_tensor([i % GRID for i in range(NUM_TILES)], "int32")
        offsets = ops.convert_to_tensor(params["offsets"], "int32")
        span = ops.arange(tile, dtype="int32")
        y = rows[None, :, None] * cell + offsets[:, :, 0:1] + span[None, None, :]  # [B, 9, t]
        x = cols[None, :, None] * cell + offsets[:, :, 1:2] + span[None, None, :]
        flips = ops.convert_to_tensor(params["flips"], "int32")[:, None, None]
        x = flips * (self.crop_size - 1 - x) + (1 - flips) * x
        corners = ops.convert_to_tensor(params["corners"], "int32")
        y = y + corners[:, 0, None, None]
        x = x + corners[:, 1, None, None]
        base = ops.arange(count, dtype="int32")[:, None, None, None] * (size * size)
        index = base + y[:, :, :, None] * size + x[:, :, None, :]  # [B, 9, t, t]
        tiles = ops.take(ops.reshape(resized, (-1, 3)), ops.reshape(index, (-1,)), axis=0)
        tiles = ops.reshape(tiles, (count, NUM_TILES, tile, tile, 3))
        if "jitter" in params:
            tiles = tiles + ops.convert_to_tensor(params["jitter"], "float32")[:, :, None, None, :]
        if "gray" in params:
            luma = ops.sum(tiles * ops.convert_to_tensor([0.2989, 0.587, 0.114], "float32"), axis=-1, keepdims=True)
            gray = ops.convert_to_tensor(params["gray"], "float32")[:, :, None, None, None]
            tiles = gray * luma + (1.0 - gray) * tiles
        mean = ops.mean(tiles, axis=(2, 3), keepdims=True)
        variance = ops.var(tiles, axis=(2, 3), keepdims=True)
        tiles = (tiles - mean) / ops.sqrt(variance + 1e-3) * 0.225 + 0.45
        labels = ops.convert_to_tensor(params["labels"], "int32")
        permutations = ops.take(ops.convert_to_tensor(self.level_permutations(level), "int32"), labels, axis=0)
        # Position i of the puzzle shows tile permutation[i] of the grid.
        puzzles = ops.take_along_axis(tiles, permutations[:, :, None, None, None], axis=1)
        return puzzles, labels

    def backbone_images(self, inputs):
        """[B, 9, t, t, 3] puzzles -> [B*9, t, t, 3]: every tile through the same (siamese) network."""
        shape = ops.shape(inputs)
        return ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))

    # --- network --------------------------------------------------------------------------------------
    def build_head(self, level, feature_channels, name):
        """Per-tile pool + shared embedding, then the nine embeddings concatenated into one classifier."""
        features = keras.Input((None, None, feature_channels), name=f"{name}_features")
        x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(features)
        x = layers.Dense(self.tile_embedding, use_bias=False, name=f"{name}_tile_embedding")(x)
        x = layers.BatchNormalization(synchronized=self.sync_bn, name=f"{name}_tile_bn")(x)
        x = layers.Activation("relu", name=f"{name}_tile_relu")(x)
        # [B*9, E] -> [B, 9*E]: tile i of every puzzle lands in slot i of its row.
        x = ops.reshape(x, (-1, NUM_TILES * self.tile_embedding))
        logits = layers.Dense(self.num_classes(level), dtype="float32", name=f"{name}_logits")(x)
        return keras.Model(features, logits, name=name)

    def get_config(self):
        config = super().get_config()
        config.update(
            set_sizes=list(self.set_sizes), permutation_seed=self.permutation_seed,
            resize_shorter=self.resize_shorter, crop_size=self.crop_size, tile_size=self.tile_size, tile_color_jitter=self.tile_color_jitter,
            tile_grayscale=self.tile_grayscale, tile_embedding=self.tile_embedding, geometry=self.geometry,
        )
        return config


def time_set_generation(size=2000, seed=0):
    """Seconds to generate a set of `size` (no cache), for the benchmark."""
    start = time.perf_counter()
    maximal_hamming_permutations(size, seed)
    return time.perf_counter() - start
