"""Shortcut probes: how far a pretext task can be solved from low-level pixel statistics, with no learning.

A pretext task teaches objects only if such cues are absent. Each probe returns its number and its chance level.

- Rotation: bilinear resampling along the pixel axes (multiples of 90 degrees) and along the diagonals (odd
  multiples of 45) leaves different fingerprints. `rotation_probe` measures, on the task's own preprocessed
  inputs, how well one statistic (energy of axis-aligned second differences over diagonal ones) separates
  the two families and every pair of angles (AUC; 0.5 = no cue), on content-free noise and on real images.
- Jigsaw: facing tile edges that (nearly) touch can be matched. `jigsaw_edge_probe` solves puzzles by
  picking, among K candidate permutations, the one whose reassembly has the smallest squared difference
  across the touching rows and columns of neighbouring tiles (accuracy; chance 1/K). Natural photographs are
  smooth across gaps that noise is not: `photograph_crops` gives crops of real photographs to probe with.
"""

import numpy as np
import tensorflow as tf

GRID = 3


def auc(positive, negative):
    """Area under the ROC curve of scores `positive` vs `negative` (Mann-Whitney U, ties counted half)."""
    positive, negative = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return u / (len(positive) * len(negative))


def separability(a, b):
    """max(AUC, 1 - AUC): how well one threshold on a statistic tells two sets apart (0.5 .. 1)."""
    value = auc(a, b)
    return max(value, 1.0 - value)


def axis_over_diagonal_energy(images):
    """Per image [N, H, W, C] (float): energy of second differences along the pixel axes over that along the
    diagonals, on the luma. Isotropic content gives about the same ratio at every angle; resampling does not."""
    x = np.asarray(images, np.float64)
    x = x @ np.array([0.299, 0.587, 0.114]) if x.shape[-1] == 3 else x[..., 0]
    c = x[:, 1:-1, 1:-1]
    vertical = x[:, 2:, 1:-1] - 2 * c + x[:, :-2, 1:-1]
    horizontal = x[:, 1:-1, 2:] - 2 * c + x[:, 1:-1, :-2]
    diagonal = x[:, 2:, 2:] - 2 * c + x[:, :-2, :-2]
    antidiagonal = x[:, 2:, :-2] - 2 * c + x[:, :-2, 2:]
    axis = (vertical**2).mean(axis=(1, 2)) + (horizontal**2).mean(axis=(1, 2))
    diag = (diagonal**2).mean(axis=(1, 2)) + (antidiagonal**2).mean(axis=(1, 2))
    return axis / np.maximum(diag, 1e-12)


def rotation_inputs(task, images, level, seed=0):
    """The task's own inputs for every image at every angle of `level`: {label: float [N, S, S, 3]}."""
    make = tf.function(lambda image, example_seed, label: task.make_example(image, example_seed, level, label)[0])
    inputs = {}
    for label in range(task.num_classes(level)):
        inputs[label] = np.stack([
            make(tf.constant(image), tf.constant([seed, i], tf.int64), tf.constant(label)).numpy()
            for i, image in enumerate(images)])
    return inputs


def rotation_probe(task, images, level=3, seed=0):
    """Separability of rotation angles by `axis_over_diagonal_energy` on the task's preprocessed inputs.

    Returns {"family": separability of multiples of 90 vs odd multiples of 45 (level 3 only, else None),
    "pairs": {(a, b): separability of label a vs label b}, "worst_pair": the largest of those, "chance": 0.5}.
    """
    statistic = {label: axis_over_diagonal_energy(x) for label, x in rotation_inputs(task, images, level, seed).items()}
    labels = sorted(statistic)
    pairs = {(a, b): separability(statistic[a], statistic[b]) for a in labels for b in labels if a < b}
    family = None
    if len(labels) == 8:
        straight = np.concatenate([statistic[k] for k in labels if k % 2 == 0])
        diagonal = np.concatenate([statistic[k] for k in labels if k % 2 == 1])
        family = separability(straight, diagonal)
    return {"family": family, "pairs": pairs, "worst_pair": max(pairs.values()), "chance": 0.5}


def edge_dissimilarity(tiles):
    """Squared difference across the touching borders of neighbouring tiles in a 3x3 grid, [9, t, t, C] in
    grid order (row by row): each tile's last column against its right neighbour's first, last row against
    the lower neighbour's first row."""
    tiles = np.asarray(tiles, np.float64)
    total = 0.0
    for index in range(GRID * GRID):
        row, col = divmod(index, GRID)
        if col + 1 < GRID:
            total += ((tiles[index][:, -1] - tiles[index + 1][:, 0]) ** 2).mean()
        if row + 1 < GRID:
            total += ((tiles[index][-1] - tiles[index + GRID][0]) ** 2).mean()
    return total


def jigsaw_edge_probe(task, images, level=1, candidates=16, seed=0):
    """Accuracy of the edge-continuity solver on the task's own puzzles, choosing among the first `candidates`
    permutations of the level's set (every puzzle uses one of them). Returns {"accuracy", "chance"}."""
    permutations = np.asarray(task.level_permutations(level))[:candidates]
    rng = np.random.default_rng(seed)
    make_example = tf.function(lambda image, key, label: task.make_example(image, key, level, label))
    correct = 0
    for i, image in enumerate(images):
        label = int(rng.integers(len(permutations)))
        puzzle, _ = make_example(tf.constant(image), tf.constant([seed, i], tf.int64), tf.constant(label))
        puzzle = puzzle.numpy()
        scores = []
        for permutation in permutations:
            grid = np.empty_like(puzzle)
            grid[permutation] = puzzle  # position j of the puzzle holds grid tile permutation[j]
            scores.append(edge_dissimilarity(grid))
        correct += int(np.argmin(scores) == label)
    return {"accuracy": correct / len(images), "chance": 1.0 / len(permutations)}


def noise_images(count, size, seed=0, smooth=0.0):
    """Content-free test images, [count, size, size, 3] uint8: i.i.d. uniform noise, or with `smooth` > 0
    isotropic noise (white noise low-passed by a Gaussian of that many pixels, contrast restored)."""
    images = np.random.default_rng(seed).integers(0, 256, (count, size, size, 3)).astype(np.float32)
    if smooth:
        from psl_keras.data.transforms import gaussian_blur

        radius = max(1, int(np.ceil(3 * smooth)))
        images = gaussian_blur(tf.constant(images), tf.fill([count], float(smooth)), radius).numpy()
        images = (images - images.mean()) / (images.std() + 1e-6) * 48 + 128
    return np.clip(images, 0, 255).astype(np.uint8)


PHOTOGRAPHS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def photograph_crops(count, side=256, seed=0):
    """Random `side`-px crops of freely licensed colour photographs (the sample photos scikit-image ships:
    astronaut, cat, coffee cup, rocket launch, motorcycle; at their own resolution), [count, side, side, 3] uint8."""
    from importlib.resources import files

    from PIL import Image

    try:
        folder = files("skimage.data")
    except ModuleNotFoundError:
        raise RuntimeError("The photographs are scikit-image's sample data: pip install scikit-image.") from None
    photos = [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOGRAPHS]
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        y, x = (rng.integers(photo.shape[axis] - side + 1) for axis in (0, 1))
        crops.append(photo[y:y + side, x:x + side])
    return np.stack(crops)
