"""The demo's page: runs, prediction tabs and retrieval, built with Gradio around one DemoApp.

apps/demo.py parses the flags and serves it; tests build it directly.
"""

import functools
import os
import traceback

NO_RUN = "(none)"
CSS = ".stage-column {min-width: 220px}"


class DemoApp:
    """The page's state: where runs are, which are loaded, the gallery; the tabs ask it for all three."""

    def __init__(self, runs_dir, gallery, max_loaded_runs=4, max_upload_bytes=20 * 2**20):
        from apps import core

        self.core = core
        self.runs_dir = runs_dir
        self.gallery = gallery
        self.cache = core.RunCache(max_loaded_runs)
        self.max_upload_bytes = max_upload_bytes
        self.runs = []
        self.refresh_runs()

    # --- runs ---------------------------------------------------------------------------------------
    def refresh_runs(self):
        self.runs = self.core.discover_runs(self.runs_dir)
        return self.runs

    def run_names(self, task=None):
        """Usable runs (of `task`); for a task's tab, the runs that kept their heads come first."""
        runs = [r for r in self.runs if not r.problem and (task is None or r.task == task)]
        if task is not None:
            runs.sort(key=lambda r: not r.has_heads)  # stable: by name within each group
        return [r.name for r in runs]

    def run_dropdown(self, task=None, label="Run", allow_none=False):
        import gradio as gr

        names = self.run_names(task)
        choices = ([NO_RUN] if allow_none else []) + names
        value = NO_RUN if allow_none else (names[0] if names else None)
        # Custom values: runs trained after the page was built are accepted (load_run checks every name).
        dropdown = gr.Dropdown(choices, value=value, label=label, allow_custom_value=True)
        self._dropdowns.append((dropdown, task, allow_none))
        return dropdown

    def load_run(self, name):
        from psl_keras.errors import PSLError

        if not name or name == NO_RUN:
            raise PSLError(f"No run chosen. Runs are looked for under {self.runs_dir}; train one with: "
                           f"{self.core.train_command(self.runs_dir)}")
        info = next((r for r in self.refresh_runs() if r.name == name), None)
        if info is None:
            raise PSLError(f"Run {name} is no longer under {self.runs_dir} (press 'Refresh runs').")
        return self.cache.get(info)

    def runs_table(self):
        rows = [r.row() for r in self.refresh_runs()]
        if rows:
            message = f"{len(rows)} run(s) under `{os.path.abspath(self.runs_dir)}`."
        else:
            message = (f"**No runs under `{os.path.abspath(self.runs_dir)}` yet.** Train one (about an hour on a "
                       f"laptop CPU; `--epochs_per_stage 1` for a quick look), then press *Refresh runs*:\n\n"
                       f"```\n{self.core.train_command(self.runs_dir)}\n```")
        return rows, message

    # --- inputs -------------------------------------------------------------------------------------
    def input_image(self, upload, example, image_size):
        """(uint8 square image at the model's working size, description) from an upload or a gallery index."""
        if upload:
            path = upload if isinstance(upload, str) else getattr(upload, "name", None) or upload.get("path")
            image = self.core.read_upload(path, self.max_upload_bytes)
            described = f"upload {os.path.basename(str(path))} ({image.shape[1]}x{image.shape[0]})"
        else:
            image, label = self.gallery.image(int(example or 0))
            described = f"gallery image #{int(example or 0)} ({self.gallery.class_name(label)})"
        from psl_keras.data.images import fit_square

        return fit_square(image, self.core.model_input_side(image_size)), described

    def random_example(self):
        import numpy as np

        return None, int(np.random.default_rng().integers(len(self.gallery)))

    # --- errors -------------------------------------------------------------------------------------
    @staticmethod
    def guarded(function):
        """Every failure becomes a message in the page (gr.Error), never a traceback or a dead request."""
        import gradio as gr

        from psl_keras.errors import PSLError

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except gr.Error:
                raise
            except PSLError as err:
                raise gr.Error(str(err)) from None
            except Exception as err:  # keep serving; the console keeps the details
                traceback.print_exc()
                raise gr.Error(f"Unexpected error ({type(err).__name__}: {err}). The app keeps running; "
                               f"details are in its console.") from None

        return wrapper

    # --- retrieval ----------------------------------------------------------------------------------
    def retrieve(self, run_a, run_b, upload, example, block, k, progress=None):
        import gradio as gr

        loaded = [self.load_run(run_a)] + ([self.load_run(run_b)] if run_b and run_b != NO_RUN else [])
        image, described = self.input_image(upload, example, loaded[0].image_size)
        outputs = [self.core.for_display(image), f"Query: **{described}** · block {block} · k={int(k)}"]
        for i in range(2):
            if i >= len(loaded):
                outputs += [gr.update(visible=False), "", [], ""]
                continue
            run = loaded[i]

            def report(done, total, name=run.info.name):
                if progress is not None:
                    progress(done / max(total, 1), desc=f"Embedding the gallery with {name} ({block}), once")

            neighbours = self.core.nearest(run, self.gallery, image, block, int(k), on_progress=report)
            items = [(self.core.for_display(self.gallery.image(int(j))[0]),
                      f"{self.gallery.class_name(int(self.gallery.labels[j]))} · {s:.3f}")
                     for j, s in zip(neighbours.indices, neighbours.similarities)]
            outputs += [gr.update(visible=True), f"### {run.info.name}\n{run.info.config.get('mode', '')} · "
                        f"{run.info.config.get('backbone', '')}", items,
                        f"kNN vote (k={len(items)}, weights exp(sim/0.07)): **{self.gallery.class_name(neighbours.vote)}**"]
        return outputs

    # --- the page -----------------------------------------------------------------------------------
    def build(self):
        import gradio as gr

        from apps.tabs import PREDICTION_TABS
        from psl_keras.backbones import BLOCK_NAMES

        self._dropdowns = []
        with gr.Blocks(title="psl-keras demo") as page:
            gr.Markdown("# psl-keras: what Progressive Stage-wise Learning trained\n"
                        "Pretext predictions of every stage's head, and nearest neighbours in the gallery from "
                        "any block of the trained backbones.")
            with gr.Tabs():
                with gr.Tab("Runs", id="runs", elem_id="runs"):
                    rows, message = self.runs_table()
                    runs_message = gr.Markdown(message)
                    table = gr.Dataframe(rows, headers=self.core.RUN_COLUMNS, interactive=False, wrap=True,
                                         column_widths=["13%", "7%", "5%", "10%", "7%", "6%", "18%", "13%", "8%",
                                                        "13%"])
                    refresh = gr.Button("Refresh runs")
                for name, tab in PREDICTION_TABS.items():
                    tab(self).build()
                with gr.Tab("Retrieval", id="retrieval", elem_id="retrieval"):
                    gr.Markdown("The k gallery images whose pooled block features are closest (cosine) to the "
                                "query's, for one run or two side by side. Gallery embeddings are computed once per "
                                "run, block and gallery, and cached on disk.")
                    with gr.Row():
                        run_a = self.run_dropdown(label="Run A")
                        run_b = self.run_dropdown(label="Run B (optional)", allow_none=True)
                    with gr.Row():
                        upload = gr.File(label="Query image (upload)", file_count="single", height=120)
                        with gr.Column():
                            example = gr.Number(label=f"…or gallery image # ({self.gallery.spec})", value=0,
                                                precision=0)
                            shuffle = gr.Button("Random gallery image", size="sm")
                    shuffle.click(self.random_example, outputs=[upload, example], api_name=False)
                    with gr.Row():
                        block = gr.Radio(list(BLOCK_NAMES), value="B4", label="Block")
                        k = gr.Slider(1, 32, value=8, step=1, label="k")
                    button = gr.Button("Find neighbours", variant="primary")
                    query = gr.Image(label="Query as the model sees it", height=160, interactive=False, buttons=[])
                    status = gr.Markdown()
                    columns = []
                    with gr.Row():
                        for _ in range(2):
                            with gr.Column(visible=False) as column:
                                title = gr.Markdown()
                                gallery = gr.Gallery(columns=4, height=360, object_fit="contain", label="neighbours")
                                vote = gr.Markdown()
                            columns += [column, title, gallery, vote]

                    def retrieve(run_a, run_b, upload, example, block, k, progress=gr.Progress()):
                        return self.guarded(self.retrieve)(run_a, run_b, upload, example, block, k, progress=progress)

                    button.click(retrieve, [run_a, run_b, upload, example, block, k], [query, status] + columns,
                                 api_name="retrieve")

            dropdowns = list(self._dropdowns)

            def refresh_all():
                rows, message = self.runs_table()
                updates = [message, rows]
                for _, task, allow_none in dropdowns:
                    names = self.run_names(task)
                    choices = ([NO_RUN] if allow_none else []) + names
                    updates.append(gr.update(choices=choices, value=NO_RUN if allow_none else
                                             (names[0] if names else None)))
                return updates

            refresh.click(refresh_all, outputs=[runs_message, table] + [d for d, _, _ in dropdowns], api_name="runs")
        return page
