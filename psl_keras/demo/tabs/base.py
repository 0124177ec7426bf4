"""What a prediction tab gets from the app, and the layout every tab shares: an image, a run, one column
per stage with its head's answer."""

import gradio as gr

from psl_keras.demo.core import png_data_uri
from psl_keras.errors import PSLError

MAX_STAGES = 3


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
    warm_up_controls = ()  # values of `controls()` for the start-up's first prediction (compiles the stages)

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
            upload, example = self.app.image_inputs()
            with gr.Row():
                controls = self.controls()
            button = gr.Button(self.button_label, variant="primary")
            with gr.Row():
                view = gr.Image(label=self.view_label, height=220, interactive=False, buttons=[])
                status = gr.Markdown(label="status")
            slots = self.stage_columns(self.picture_label)
            outputs = [view, status] + [c for slot in slots for c in slot]
            # (a Label is emptied with {}: null stops the browser's update)
            empty = "[null, '', " + ", ".join(["null, '', {}, '', ''"] * MAX_STAGES) + "]"
            self.app.on_click(button, self.predict, [run, upload, example, *controls], outputs, self.task, empty)

    # --- shared pieces ------------------------------------------------------------------------------
    def stage_columns(self, picture_label):
        """Up to three stage columns: (column, title, probabilities, picture, verdict) each."""
        slots = []
        with gr.Row():
            for i in range(MAX_STAGES):
                with gr.Column(visible=False, elem_classes=["stage-column"]) as column:
                    title = gr.Markdown(f"### S{i + 1}", label=f"S{i + 1} title")
                    probabilities = gr.Label(label=f"S{i + 1} head's probabilities", num_top_classes=8)
                    # Written into the page (a data URI), not served as a file: one fewer fetch per stage.
                    picture = gr.HTML(label=f"S{i + 1}: {picture_label}")
                    verdict = gr.Markdown(label=f"S{i + 1} verdict")
                slots.append((column, title, probabilities, picture, verdict))
        return slots

    def loaded_run(self, run_name):
        """The run picked in the tab, loaded, with its stage heads; a PSLError says what is missing."""
        loaded = self.app.load_run(run_name, self.task)
        if loaded.info.task != self.task:
            raise PSLError(f"Run {run_name} was trained on {loaded.info.task or 'an unknown task'}, not {self.task}; "
                           f"pick a {self.task} run (the Runs tab lists them).")
        stages = loaded.stages()
        if not stages:
            raise PSLError(
                f"Run {run_name} has no stage heads: it was trained before runs kept them, so only retrieval "
                f"works with it. Train a run that keeps its heads, e.g.: "
                f"{self.app.core.train_command(self.app.runs_dir, self.task, self.app.data_dir)}")
        return loaded, stages

    @staticmethod
    def stage_probabilities(loaded, stages, inputs):
        """(stage head, its softmax probabilities over its own level) for one example, stage by stage."""
        return zip((head for head, _ in stages), loaded.stage_probabilities(inputs))

    @staticmethod
    def chance(probabilities):
        """' · chance 12.5%': what a head guessing at random gets on its level."""
        return f" · chance {100 / len(probabilities):.3g}%"

    @staticmethod
    def stage_outputs(results, picture_label=""):
        """Flat gradio outputs for the stage columns from [(title, probabilities, picture, verdict)]."""
        flat = []
        for i in range(MAX_STAGES):
            if i < len(results):
                title, probabilities, picture, verdict = results[i]
                flat += [gr.update(visible=True), title, probabilities, picture_html(picture, picture_label), verdict]
            else:
                flat += [gr.update(visible=False), "", None, "", ""]
        return flat


def picture_html(image, caption=""):
    """A stage's picture as an image inside the page."""
    from html import escape

    return (f'<figure class="stage-picture"><img src="{png_data_uri(image)}" alt="{escape(caption)}">'
            f'<figcaption>{escape(caption)}</figcaption></figure>')
