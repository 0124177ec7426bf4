"""Jigsaw tab: the image cut into the run's 3x3 puzzle, each stage's head naming the permutation."""

import gradio as gr
import numpy as np
import tensorflow as tf

from psl_keras.demo.core import for_display
from psl_keras.demo.tabs.base import PredictionTab

GAP = 2  # pixels between tiles in the pictures


def grid_picture(tiles, order=None):
    """Nine tiles [9, t, t, 3] as a 3x3 picture with gaps; `order[k]` is the grid cell of tile k."""
    tiles = np.clip(np.asarray(tiles, np.float32), 0.0, 1.0)
    side = tiles.shape[1]
    picture = np.ones((3 * side + 2 * GAP, 3 * side + 2 * GAP, 3), np.float32)
    for k in range(9):
        cell = k if order is None else int(order[k])
        row, col = divmod(cell, 3)
        y, x = row * (side + GAP), col * (side + GAP)
        picture[y:y + side, x:x + side] = tiles[k]
    return for_display(picture)


def permutation_text(permutation):
    """A permutation as its 3x3 grid, row by row: slot k holds the tile from grid cell permutation[k]."""
    values = [str(int(v)) for v in permutation]
    return " / ".join(" ".join(values[r:r + 3]) for r in (0, 3, 6))


def tiles_in_place(guess, applied):
    return sum(int(a) == int(b) for a, b in zip(guess, applied))


class JigsawTab(PredictionTab):
    task = "jigsaw"
    title = "Jigsaw"
    intro = ("Cut an image into the run's 3x3 puzzle and shuffle it by a permutation of one level's set; every "
             "stage's head names the permutation from its own set (C1 ⊂ C2 ⊂ C3).")
    button_label = "Solve the puzzle"
    view_label = "The puzzle as the model sees it (tiles in input order)"
    warm_up_controls = ("1", -1, 0)
    picture_label = "the tiles put back by the top guess"

    def controls(self):
        return [gr.Dropdown([("C1", "1"), ("C2", "2"), ("C3", "3")], value="1", label="Set of the applied permutation"),
                gr.Number(label="Permutation index in that set (-1: random)", value=-1, precision=0),
                gr.Number(label="Seed (crop, tiles, random permutation)", value=0, precision=0)]

    def predict(self, run_name, upload, example, level, index, seed):
        loaded, stages = self.loaded_run(run_name)
        image, described, _ = self.app.input_image(upload, example, loaded.image_size)
        task = loaded.task
        level, seed = int(level), int(seed or 0)
        permutations = task.level_permutations(level)
        index = int(-1 if index is None else index)
        if index < 0:
            index = int(np.random.default_rng(seed).integers(len(permutations)))
        elif index >= len(permutations):
            raise gr.Error(f"Permutation index {index} is outside C{level}, which has {len(permutations)} "
                           f"permutations (0..{len(permutations) - 1}).")
        puzzle, label = task.make_example(tf.constant(image), tf.constant([seed, 0], tf.int64), level, index)
        puzzle = puzzle.numpy()
        applied = tuple(int(v) for v in permutations[int(label)])
        results = []
        for head, probabilities in self.stage_probabilities(loaded, stages, puzzle):
            head_set = task.level_permutations(head.level)
            top = np.argsort(-probabilities, kind="stable")[:5]
            best = tuple(int(v) for v in head_set[top[0]])
            if int(label) >= len(head_set):  # the sets nest as prefixes
                verdict = (f"**Not in its set:** S{head.stage} knows C{head.level} ({len(head_set)} permutations); "
                           f"its guess #{int(top[0])} puts {tiles_in_place(best, applied)} of 9 tiles in place")
            elif best == applied:
                verdict = f"**Right:** #{int(top[0])}, every tile in place"
            else:
                verdict = (f"**Wrong:** guessed #{int(top[0])}, {tiles_in_place(best, applied)} of 9 tiles in "
                           f"place")
            title = (f"### S{head.stage} · head on {head.last_block} · C{head.level} ({len(head_set)})"
                     f"{self.chance(probabilities)}")
            top5 = {f"#{int(i)} · {tiles_in_place(head_set[i], applied)}/9 tiles in place": float(probabilities[i])
                    for i in top}
            results.append((title, top5, grid_picture(puzzle, best), verdict))
        status = (f"**{described}**, shuffled by permutation **#{int(label)}** of C{level} (seed {seed}), "
                  f"`{permutation_text(applied)}`: slot k of the puzzle (left to right, top to bottom) holds "
                  f"the tile of grid cell k of that list. Each picture below puts the tiles back where that "
                  f"stage's top guess says they belong.")
        return [grid_picture(puzzle), status] + self.stage_outputs(results, self.picture_label)
