"""Rotation tab: the image turned by a chosen angle, each stage's head guessing the angle on its own level."""

import gradio as gr
import numpy as np
import tensorflow as tf
from PIL import Image

from psl_keras.demo.core import for_display
from psl_keras.demo.tabs.base import PredictionTab
from psl_keras.tasks.rotation import ROTATION_LEVELS, rotation_angles

# String values: the API lists and accepts "1", "2", "3" (the labels are for people).
LEVEL_CHOICES = [(f"R{level} ({', '.join(f'{a:g}°' for a in rotation_angles(level))})", str(level))
                 for level in range(1, len(ROTATION_LEVELS) + 1)]


def angle_choices(level):
    return ["random"] + [f"{a:g}" for a in rotation_angles(int(level))]


def turn(image, degrees):
    """Rotates a display image counter-clockwise by `degrees` (negative: clockwise) about its centre."""
    return np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.BICUBIC, fillcolor=(200, 200, 200)))


class RotationTab(PredictionTab):
    task = "rotation"
    title = "Rotation"
    intro = ("Turn an image by an angle of one level, then ask every stage's head which angle it was: S1 knows R1 "
             "(2 angles), S2 R2 (4), S3 R3 (8) in PSL; sl and e2e heads know R3.")
    button_label = "Predict the rotation"
    warm_up_controls = ("3", "random", 0)
    picture_label = "the input turned back by the top guess"

    def controls(self):
        level = gr.Dropdown(LEVEL_CHOICES, value="3", label="Level of the applied angle")
        angle = gr.Dropdown(angle_choices(3), value="random", label="Angle (degrees)")
        seed = gr.Number(label="Seed (crop, flip, random angle)", value=0, precision=0)
        level.change(lambda value: gr.update(choices=angle_choices(value), value="random"), level, angle,
                     api_name=False, queue=False)
        return [level, angle, seed]

    def predict(self, run_name, upload, example, level, angle, seed):
        loaded, stages = self.loaded_run(run_name)
        image, described, _ = self.app.input_image(upload, example, loaded.image_size)
        level, seed = int(level), int(seed or 0)
        angles = rotation_angles(level)
        if angle in (None, "", "random"):
            label = int(np.random.default_rng(seed).integers(len(angles)))
        elif str(angle) in angle_choices(level):
            label = angle_choices(level).index(str(angle)) - 1
        else:
            raise gr.Error(f"{angle}° is not an angle of R{level}; choose one of {', '.join(angle_choices(level))}.")
        task = loaded.task
        inputs, label = task.make_example(tf.constant(image), tf.constant([seed, 0], tf.int64), level, label)
        inputs = inputs.numpy()
        applied = angles[int(label)]
        shown = for_display(inputs)
        results = []
        for head, probabilities in self.stage_probabilities(loaded, stages, inputs):
            head_angles = rotation_angles(head.level)
            predicted = head_angles[int(np.argmax(probabilities))]
            if applied not in head_angles:
                verdict = (f"**Not in its level:** S{head.stage} knows {', '.join(f'{a:g}°' for a in head_angles)}; "
                           f"it guessed {predicted:g}°")
            elif predicted == applied:
                verdict = f"**Right:** {predicted:g}°"
            else:
                verdict = f"**Wrong:** guessed {predicted:g}°, the image was turned {applied:g}°"
            title = f"### S{head.stage} · head on {head.last_block} · R{head.level}{self.chance(probabilities)}"
            results.append((title, {f"{a:g}°": float(p) for a, p in zip(head_angles, probabilities)},
                            turn(shown, -predicted), verdict))
        status = (f"**{described}**, turned **{applied:g}°** counter-clockwise (R{level}, seed {seed}). "
                  f"Each picture below is the input turned back by that stage's top guess.")
        return [shown, status] + self.stage_outputs(results, self.picture_label)
