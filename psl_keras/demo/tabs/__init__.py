"""Prediction tabs, one module per pretext task. A new task's tab is one module here plus one line below;
the app's core (app.py, page.py, core.py) does not change."""

from psl_keras.demo.tabs.jigsaw import JigsawTab
from psl_keras.demo.tabs.rotation import RotationTab

PREDICTION_TABS = {
    "rotation": RotationTab,
    "jigsaw": JigsawTab,
}
