"""Prediction tabs, one module per pretext task. A new task's tab is one module here plus one line below;
the app's core (apps/demo.py, apps/page.py, apps/core.py) does not change."""

from apps.tabs.jigsaw import JigsawTab
from apps.tabs.rotation import RotationTab

PREDICTION_TABS = {
    "rotation": RotationTab,
    "jigsaw": JigsawTab,
}
