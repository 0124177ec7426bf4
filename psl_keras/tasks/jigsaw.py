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

import keras
import numpy as np
from keras import layers, ops

from psl_keras.atomic import atomic_path
from psl_keras.data import transforms
from psl_keras.ranges import fraction, non_negative_int
from psl_keras.tasks.base import Task

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
        "geometry": ("gapped", "gapped: the paper's tiles in cells twice their size, so facing borders are far "
                               "enough apart not to continue; standard: the paper's geometry (64-px tiles in 75-px "
                               "cells at 224 px).",
                     GEOMETRIES),
        "gapped_sizes": ("all", "Image sizes the gapped geometry applies to: all, or small (<=64 px; runs saved "
                                "before gapped 224-px tiles used the standard geometry above 64 px).",
                         ("all", "small")),
    }
    LEGACY_OPTIONS = {"geometry": "standard", "gapped_sizes": "small"}

    def __init__(self, image_size, head_hidden=256, sync_bn=False, set_sizes=DEFAULT_SET_SIZES,
                 permutation_seed=0, resize_shorter=None, crop_size=None, tile_size=None,
                 tile_color_jitter=0.0, tile_grayscale=0.0, tile_embedding=None, geometry="gapped",
                 gapped_sizes="all"):
        super().__init__(image_size, head_hidden, sync_bn)
        if geometry not in self.GEOMETRIES:
            raise ValueError(f"geometry must be one of {', '.join(self.GEOMETRIES)}, got {geometry!r}.")
        if gapped_sizes not in ("all", "small"):
            raise ValueError(f"gapped_sizes must be all or small, got {gapped_sizes!r}.")
        self.geometry, self.gapped_sizes = geometry, gapped_sizes
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
        if self.geometry == "gapped" and (small or gapped_sizes == "all") and not crop_size:
            # In the paper's geometry facing tiles are close enough that an edge-matching solver with no
            # learning solves many puzzles: 50% of 16-way CIFAR puzzles, 43% of 224-px puzzles of photographs
            # (chance 6%). The same tiles in cells twice their size (the image upsampled more, so the network
            # sees tiles of the paper's size) leave twice the gap: near chance on both
            # (benchmarks/shortcuts.py, benchmarks/jigsaw_photos.py).
            tile_size = int(tile_size or round(crop / GRID * 64 / 75))
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
    def sample(self, seed, level, image_shape):
        """The crop's corner in the resized image, a flip, each tile's place in its cell, the permutation's
        index (and the tile jitter and grayscale choices where those options are on)."""
        u = transforms.uniform(seed, [3 + 2 * NUM_TILES + 1 + 4 * NUM_TILES])
        resized = transforms.scaled_shape(image_shape, self.resize_shorter)
        room = self.cell_size - self.tile_size + 1
        params = {"corner": ops.stack([transforms.choice(u[i], resized[i] - self.crop_size + 1) for i in (0, 1)]),
                  "flip": u[2] < 0.5,
                  "offsets": ops.reshape(transforms.choice(u[3:3 + 2 * NUM_TILES], room), (NUM_TILES, 2)),
                  "label": transforms.choice(u[3 + 2 * NUM_TILES], self.num_classes(level))}
        rest = u[4 + 2 * NUM_TILES:]
        if self.tile_color_jitter:
            params["jitter"] = ops.reshape(self.tile_color_jitter * (2 * rest[:3 * NUM_TILES] - 1), (NUM_TILES, 3))
        if self.tile_grayscale:
            params["gray"] = rest[3 * NUM_TILES:] < self.tile_grayscale
        return params

    def tiles(self, images, params):
        """The nine tiles of each image in grid order, row by row, before any per-tile change: uint8 images
        [B, H, W, 3] -> float32 [B, 9, t, t, 3]. Resize, crop, flip and the tile cuts are one pixel gather."""
        resized = transforms.resize_shorter_side(transforms.to_float(images), self.resize_shorter)
        cell, span = self.cell_size, ops.arange(self.tile_size, dtype="int32")
        grid = ops.convert_to_tensor([divmod(i, GRID) for i in range(NUM_TILES)], "int32")  # (row, col)
        offsets, corner = ops.cast(params["offsets"], "int32"), ops.cast(params["corner"], "int32")
        # Tile i's pixel (ty, tx) sits at crop position (row * cell + oy + ty, col * cell + ox + tx) of the
        # flipped crop; a flip reads the crop's column (crop - 1 - x).
        y = grid[None, :, 0:1] * cell + offsets[:, :, 0:1] + span  # [B, 9, t]
        x = grid[None, :, 1:2] * cell + offsets[:, :, 1:2] + span
        x = ops.where(ops.reshape(ops.cast(params["flip"], "bool"), (-1, 1, 1)), self.crop_size - 1 - x, x)
        y = (y + corner[:, 0, None, None])[:, :, :, None]  # [B, 9, t, 1]
        x = (x + corner[:, 1, None, None])[:, :, None, :]  # [B, 9, 1, t]
        return transforms.gather_pixels(resized, y, x)

    def prepare(self, images, params, level):
        """(puzzles [B, 9, t, t, 3], labels [B]): the tiles, changed and normalised each on its own, reordered
        by the level's permutation of each example's label."""
        tiles = self.tiles(images, params)
        if "jitter" in params:
            tiles = tiles + ops.cast(params["jitter"], "float32")[:, :, None, None, :]
        if "gray" in params:
            gray = ops.reshape(params["gray"], (-1, NUM_TILES, 1, 1, 1))
            tiles = ops.where(gray, transforms.grayscale(tiles), tiles)
        # Every tile gets the same mean and spread: brightness and contrast differences between tiles, a
        # low-level cue to their position, are removed.
        tiles = transforms.standardize(tiles, axis=(2, 3))
        labels = ops.cast(params["label"], "int32")
        permutations = ops.take(ops.convert_to_tensor(self.level_permutations(level), "int32"), labels, axis=0)
        # Position i of the puzzle shows tile permutation[i] of the grid.
        return ops.take_along_axis(tiles, permutations[:, :, None, None, None], axis=1), labels

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
            gapped_sizes=self.gapped_sizes,
        )
        return config
