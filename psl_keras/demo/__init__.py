"""The Gradio demo (`psl-demo`, `python apps/demo.py`): `app` parses the flags and serves the page `page`
builds from the prediction tabs in `tabs/` and the runs, cache and gallery of `core`."""
