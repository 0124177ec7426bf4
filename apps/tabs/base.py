"""What a prediction tab gets from the app, and the layout every tab shares: an image, a run, one column
per stage with its head's answer."""

import gradio as gr
import numpy as np

from psl_keras.errors import PSLError
from psl_keras.stages import stage_logits

MAX_STAGES = 3


def softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


class PredictionTab:
    """Base of the per-task tabs: the page layout is here; a subclass names its task and texts, adds its own
    controls and implements `predict(run, upload, example, *controls)`, which returns the model's view, a
    status line and `stage_outputs(...)`."""

    task = None  # the registered task name whose runs this tab explains; also the tab's id and API name
    title = ""
    intro = ""  # a line above the tab's controls
    button_label = "Predict"
    view_label = "Input as the model sees it"
    picture_label = ""  # the picture each stage column shows

    def __init__(self, app):
        self.app = app

    def controls(self):
        """The task's own inputs (created inside a row), in the order `predict` takes them."""
        raise NotImplementedError

    def predict(self, run_name, upload, example, *controls):
        raise NotImplementedError

    def build(self):
        with gr.Tab(self.title, id=self.task, elem_id=self.task):
            gr.Markdown(self.intro)
            run = self.app.run_dropdown(self.task)
            upload, example = self.image_inputs()
            with gr.Row():
                controls = self.controls()
            button = gr.Button(self.button_label, variant="primary")
            with gr.Row():
                view = gr.Image(label=self.view_label, height=220, interactive=False, buttons=[])
                status = gr.Markdown()
            slots = self.stage_columns(self.picture_label)
            outputs = [view, status] + [c for slot in slots for c in slot]
            # The error toast says what went wrong; per-output "Error" badges would only repeat it.
            button.click(self.app.guarded(self.predict), [run, upload, example, *controls], outputs,
                         api_name=self.task, show_progress="minimal")

    # --- shared pieces ------------------------------------------------------------------------------
    def image_inputs(self):
        """Upload or gallery example, as a row of components: (upload, example number, random button)."""
        with gr.Row():
            upload = gr.File(label="Image (upload)", file_count="single", height=120)
            with gr.Column():
                example = gr.Number(label=f"…or gallery image # ({self.app.gallery.spec})", value=0, precision=0)
                shuffle = gr.Button("Random gallery image", size="sm")
        shuffle.click(self.app.random_example, outputs=[upload, example], api_name=False)
        return upload, example

    def stage_columns(self, picture_label):
        """Up to three stage columns: (column, title, probabilities, picture, verdict) each."""
        slots = []
        with gr.Row():
            for i in range(MAX_STAGES):
                with gr.Column(visible=False, elem_classes=["stage-column"]) as column:
                    title = gr.Markdown(f"### S{i + 1}")
                    probabilities = gr.Label(label="head's probabilities", num_top_classes=8)
                    picture = gr.Image(label=picture_label, height=200, interactive=False, buttons=[])
                    verdict = gr.Markdown()
                slots.append((column, title, probabilities, picture, verdict))
        return slots

    def loaded_run(self, run_name):
        """The run picked in the tab, loaded, with its stage heads; a PSLError says what is missing."""
        loaded = self.app.load_run(run_name)
        if loaded.info.task != self.task:
            raise PSLError(f"Run {run_name} was trained on {loaded.info.task or 'an unknown task'}, not {self.task}; "
                           f"pick a {self.task} run (the Runs tab lists them).")
        stages = loaded.stages()
        if not stages:
            raise PSLError(
                f"Run {run_name} has no stage heads: it was trained before runs kept them, so only retrieval "
                f"works with it. Train a run that keeps its heads, e.g.: python train.py --task {self.task} "
                f"--config cifar10_small --data_dir ../shared/tfds --output_dir runs/{self.task}_psl")
        return loaded, stages

    @staticmethod
    def stage_probabilities(stages, task, inputs):
        """(stage head, its softmax probabilities over its own level) for one example, stage by stage."""
        for head, backbone in stages:
            yield head, softmax(np.asarray(stage_logits(backbone, head, task, inputs[None]))[0])

    @staticmethod
    def stage_outputs(results):
        """Flat gradio outputs for the stage columns from [(title, probabilities, picture, verdict)]."""
        flat = []
        for i in range(MAX_STAGES):
            if i < len(results):
                title, probabilities, picture, verdict = results[i]
                flat += [gr.update(visible=True), title, probabilities, picture, verdict]
            else:
                flat += [gr.update(visible=False), "", None, None, ""]
        return flat
