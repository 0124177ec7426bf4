"""The demo's page: runs, prediction tabs and retrieval, built with Gradio around one DemoApp.

app.py (psl-demo, apps/demo.py) parses the flags and serves it; tests build it directly.
"""

import functools
import os
from html import escape
import threading
import traceback

import numpy as np

NO_RUN = "(none)"
PAPER = "https://arxiv.org/abs/2106.05554"
EXAMPLES = 12  # gallery images offered as clickable examples
# Narrow screens: gallery thumbnails shrink to the width instead of running off the page. Thumbnails travel at
# their own size (a CIFAR image is 32 px) and are enlarged by the browser, pixelated.
CSS = """
.stage-column {min-width: 220px}
.grid-container {grid-template-columns: repeat(auto-fill, minmax(min(72px, 22%), 1fr)) !important}
.grid-wrap img, .preview img, .neighbours img {image-rendering: pixelated}
.neighbours {display: grid; grid-template-columns: repeat(auto-fill, minmax(min(84px, 23%), 1fr)); gap: 6px}
.neighbours figure {margin: 0} .neighbours img {width: 100%; aspect-ratio: 1; object-fit: contain}
.neighbours figcaption {font-size: 11px; line-height: 1.2; overflow-wrap: anywhere}
.stage-picture {margin: 0; text-align: center} .stage-picture img {width: 100%; max-width: 200px; image-rendering: pixelated}
.stage-picture figcaption {font-size: 12px; color: #666}
"""

HOW_TO_READ = f"""
**Progressive Stage-wise Learning** ([PSL, Li et al., CVPR 2021]({PAPER})) trains a self-supervised backbone
in stages instead of end to end. The backbone is a chain of blocks, **B1** (nearest the pixels) to **B5**; stage
**S1** trains B1–B3, **S2** B2–B4 and **S3** B3–B5, each through a small head of its own that reads the
stage's last block ("head on B3"), with the blocks below its window left as the earlier stages made them.
Each stage learns a harder **level** of one pretext task: for rotation S1 tells 2 angles apart (R1), S2 4 (R2)
and S3 8 (R3); for jigsaw S1 picks among the smallest set of permutations (C1) and S3 among the largest (C3).
A head guessing at random is right at the **chance** level shown beside every accuracy (50% for 2 angles),
so an accuracy means something only well above it. The prediction tabs show what each stage's head answers
for your image; Retrieval shows which gallery images one block of a finished backbone finds alike, for a PSL
run and, beside it, an end-to-end (e2e) run of the same task.
"""


class DemoApp:
    """The page's state: where runs are, which are loaded, the gallery; the tabs ask it for all three."""

    def __init__(self, runs_dir, gallery, max_loaded_runs=4, max_upload_bytes=20 * 2**20, data_dir=""):
        from psl_keras.demo import core

        self.core = core
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.gallery = gallery
        self.cache = core.RunCache(max_loaded_runs)
        self.max_upload_bytes = max_upload_bytes
        self.runs = []
        self.tabs = {}
        self.built = threading.Event()  # set once build() has made the page
        self.gallery_ready, self.gallery_error = threading.Event(), None
        self.seen = set()  # every run name listed so far: a name missing now was removed, not mistyped
        self.refresh_runs()

    # --- runs ---------------------------------------------------------------------------------------
    def refresh_runs(self):
        self.runs = self.core.discover_runs(self.runs_dir)
        self.seen.update(r.name for r in self.runs)
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

    def load_run(self, name, task=None):
        from psl_keras.errors import PSLError

        task = task or "rotation"
        if not name or name == NO_RUN:
            raise PSLError(f"No {task} run chosen. Runs are looked for under {self.runs_dir}; train one with: "
                           f"{self.core.train_command(self.runs_dir, task, self.data_dir)}")
        was_listed = name in self.seen
        info = next((r for r in self.refresh_runs() if r.name == name), None)
        if info is None:
            if was_listed:
                raise PSLError(f"Run {name} is no longer under {self.runs_dir} (press 'Refresh runs').")
            known = ", ".join(self.run_names()) or "none yet"
            raise PSLError(f"There is no run {name} under {self.runs_dir} (runs there: {known}).")
        return self.cache.get(info)

    def runs_table(self):
        rows = [r.row() for r in self.refresh_runs()]
        if rows:
            message = f"{len(rows)} run(s) under `{os.path.abspath(self.runs_dir)}`."
        else:
            message = (f"**No runs under `{os.path.abspath(self.runs_dir)}` yet.** Train one (a few minutes on a "
                       f"laptop CPU), then press *Refresh runs*:\n\n"
                       f"```\n{self.core.train_command(self.runs_dir, data_dir=self.data_dir)}\n```")
        return rows, message

    def warm_up(self):
        """Starts the start-up's background work: the gallery is opened (a failure is kept in `gallery_error`,
        and `gallery_ready` is set either way), every usable run (up to the cache's capacity) loaded and its
        gallery embedded, then the prediction tabs' stages compiled (once the page is built), so the first
        request of a visitor does not pay for them. Other failures are left for that request to report."""
        from psl_keras.errors import PSLError

        def work():
            try:
                self.gallery.image(0)
            except PSLError as err:
                self.gallery_error = err
            finally:
                self.gallery_ready.set()
            if self.gallery_error:
                return
            names = self.run_names()[:self.cache.capacity]
            try:
                for name in names:
                    self.core.nearest(self.load_run(name), self.gallery, self.gallery.image(0)[0], DEFAULT_BLOCK, 1)
                self.built.wait()
                for name in names:
                    loaded = self.load_run(name)
                    tab = self.tabs.get(loaded.info.task)
                    if tab is not None and loaded.info.has_heads:
                        tab.predict(name, None, 0, *tab.warm_up_controls)  # loads and compiles its stages
            except Exception:  # noqa: BLE001 - reported by the request that needs the part that failed
                pass

        thread = threading.Thread(target=work, name="warm-up", daemon=True)
        thread.start()
        return thread

    # --- inputs -------------------------------------------------------------------------------------
    def input_image(self, upload, example, image_size):
        """(uint8 square image at the model's working size, description, gallery index or None) from an
        upload or a gallery index."""
        if upload:
            path = upload if isinstance(upload, str) else getattr(upload, "name", None) or upload.get("path")
            image = self.core.read_upload(path, self.max_upload_bytes)
            described, index = f"upload {os.path.basename(str(path))} ({image.shape[1]}x{image.shape[0]})", None
        else:
            index = int(example or 0)
            image, _ = self.gallery.image(index)
            described = f"gallery image #{index} ({self.gallery.caption(index)})"
        from psl_keras.data.images import fit_square

        return fit_square(image, self.core.model_input_side(image_size)), described, index

    def preview(self, upload, example):
        """The chosen input as it will be used, before any button is pressed (a gallery image at its own
        pixels, enlarged without smoothing)."""
        if upload:
            image, described, _ = self.input_image(upload, example, 160)
        else:
            image, described = self.gallery.image(int(example or 0))[0], f"gallery image #{int(example or 0)} " \
                f"({self.gallery.caption(int(example or 0))})"
        return self.core.for_display(image), f"Input: {described}"

    def image_inputs(self):
        """The input block every tab shares: an upload, a gallery image number with clickable examples and a
        random pick, and a preview. Returns (upload, example number)."""
        import gradio as gr

        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Image (upload)", file_count="single", height=110)
                with gr.Row():
                    example = gr.Number(label=f"…or gallery image # ({self.gallery.spec})", value=0, precision=0,
                                        minimum=0)
                    shuffle = gr.Button("Random gallery image", size="sm")
                examples = gr.Gallery(label="Examples (click one)", columns=6,
                                      height=130, allow_preview=False, object_fit="cover", buttons=[])
            with gr.Column(scale=1, min_width=140):
                preview = gr.Image(label="Input", height=150, interactive=False, buttons=[])
                preview_text = gr.Markdown()
        shown = self.guarded(self.preview)
        shuffle.click(self.random_example, outputs=[upload, example], api_name=False, queue=False)

        def pick(event: gr.SelectData):  # an example clicked becomes the input; an upload is cleared
            return None, int(event.index)

        examples.select(pick, None, [upload, example], api_name=False, queue=False, show_progress="hidden")
        for event in (example.change, upload.change):
            event(shown, [upload, example], [preview, preview_text], api_name=False, queue=False,
                  show_progress="hidden")
        self._previews.append((preview, preview_text, upload, example, examples))
        return upload, example

    def example_thumbnails(self):
        try:
            return [(self.core.for_display(self.gallery.image(i)[0], enlarge=False), f"#{i} {self.gallery.caption(i)}")
                    for i in range(min(EXAMPLES, len(self.gallery)))]
        except Exception:  # noqa: BLE001 - an unreadable gallery is reported where it is used
            return []

    def random_example(self):
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

    @staticmethod
    def on_click(button, function, inputs, outputs, api_name, empty):
        """`button` runs `function`; the previous result is cleared in the browser the moment it is pressed
        (no round trip), so a failure never leaves an old answer under a new input. (Requests stay on the queue:
        off it, a failure's message does not reach the page.)"""
        button.click(None, None, outputs, js=f"() => {empty}", api_name=False, queue=False, show_progress="hidden")
        button.click(DemoApp.guarded(function), inputs, outputs, api_name=api_name, show_progress="minimal",
                     concurrency_limit=None)

    # --- retrieval ----------------------------------------------------------------------------------
    def retrieve(self, run_a, run_b, upload, example, block, k):
        """The query as the model sees it, a status line, and per run: its column's visibility, title, the
        neighbours as a picture grid, the vote, and the neighbours as data (for the API)."""
        import gradio as gr

        loaded = [self.load_run(run_a)] + ([self.load_run(run_b)] if run_b and run_b != NO_RUN else [])
        image, described, index = self.input_image(upload, example, loaded[0].image_size)
        k = int(k)
        outputs = [self.core.for_display(image), f"Query: **{described}** · block {block} · k={k}"
                   + (" · the query itself is left out of its neighbours" if index is not None else "")]
        for i in range(2):
            if i >= len(loaded):
                outputs += [gr.update(visible=False), "", "", "", []]
                continue
            run = loaded[i]
            neighbours = self.core.nearest(run, self.gallery, image, block, k, exclude=index)
            found = [{"index": int(j), "caption": self.gallery.caption(int(j)), "similarity": round(float(s), 4)}
                     for j, s in zip(neighbours.indices, neighbours.similarities)]
            if neighbours.vote is None:
                vote = f"k={len(found)} (this gallery has no class labels, so no vote)"
            else:
                vote = (f"kNN vote (k={len(found)}, weights exp(sim/0.07)): "
                        f"**{self.gallery.class_name(neighbours.vote)}**")
            outputs += [gr.update(visible=True), f"### {run.info.name}\n{run.info.config.get('mode', '')} · "
                        f"{run.info.config.get('backbone', '')}", self.neighbours_html(found), vote, found]
        return outputs

    def neighbours_html(self, found):
        """The neighbours as one grid of inline images with captions: one response, no image files to fetch
        (sixteen fetches took longer than the search itself)."""
        cells = "".join(
            f'<figure><img src="{self.core.png_data_uri(self.gallery.image(n["index"])[0])}" alt="{escape(n["caption"])}">'
            f'<figcaption>{escape(n["caption"])} · {n["similarity"]:.3f}</figcaption></figure>' for n in found)
        return f'<div class="neighbours">{cells}</div>'

    # --- the page -----------------------------------------------------------------------------------
    def build(self):
        import gradio as gr

        from psl_keras.demo.tabs import PREDICTION_TABS

        self._dropdowns, self._previews, self.tabs = [], [], {}
        with gr.Blocks(title="psl-keras demo") as page:
            gr.Markdown("# psl-keras: what Progressive Stage-wise Learning trained\n"
                        "Pretext predictions of every stage's head, and nearest neighbours in the gallery from "
                        "any block of the trained backbones.")
            with gr.Accordion("How to read this", open=False):
                gr.Markdown(HOW_TO_READ)
            with gr.Tabs():
                with gr.Tab("Runs", id="runs", elem_id="runs"):
                    rows, message = self.runs_table()
                    runs_message = gr.Markdown(message)
                    table = gr.Dataframe(rows, headers=self.core.RUN_COLUMNS, interactive=False, wrap=True,
                                         label="runs", column_widths=["12%", "7%", "5%", "10%", "7%", "6%", "20%",
                                                                      "12%", "8%", "13%"])
                    refresh = gr.Button("Refresh runs")
                for name, tab in PREDICTION_TABS.items():
                    self.tabs[name] = tab(self)
                    self.tabs[name].build()
                with gr.Tab("Retrieval", id="retrieval", elem_id="retrieval"):
                    gr.Markdown("The k gallery images whose pooled block features are closest to the query's "
                                "(cosine after centring on the gallery's mean), for one run or two side by side. "
                                "Gallery embeddings are computed once per run, block and gallery, and cached.")
                    with gr.Row():
                        run_a = self.run_dropdown(label="Run A")
                        run_b = self.run_dropdown(label="Run B (optional)", allow_none=True)
                    upload, example = self.image_inputs()
                    with gr.Row():
                        block = gr.Radio(list(self.core.BLOCK_NAMES), value=DEFAULT_BLOCK, label="Block")
                        k = gr.Slider(1, 32, value=8, step=1, label="k")
                    button = gr.Button("Find neighbours", variant="primary")
                    query = gr.Image(label="Query as the model sees it", height=160, interactive=False, buttons=[])
                    status = gr.Markdown(label="status")
                    columns = []
                    with gr.Row():
                        for side in "AB":
                            with gr.Column(visible=False, min_width=200) as column:
                                title = gr.Markdown(label=f"run {side}")
                                grid = gr.HTML(label=f"neighbours {side}")
                                vote = gr.Markdown(label=f"vote {side}")
                                found = gr.JSON(label=f"neighbours {side} (data)", visible=False)
                            columns += [column, title, grid, vote, found]
                    outputs = [query, status] + columns
                    self.on_click(button, self.retrieve, [run_a, run_b, upload, example, block, k], outputs,
                                  "retrieve", "[null, '', " + ", ".join(["null, '', '', '', []"] * 2) + "]")

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
            # The first preview of each tab's input, once the page is open.
            for preview, preview_text, upload, example, examples in self._previews:
                page.load(self.guarded(self.preview), [upload, example], [preview, preview_text], api_name=False,
                          queue=False, show_progress="hidden")
                page.load(self.example_thumbnails, None, examples, api_name=False, queue=False,
                          show_progress="hidden")
        self.built.set()
        return page


DEFAULT_BLOCK = "B4"
