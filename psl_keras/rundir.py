"""The files of a run directory, named in one place for the trainer, the evaluation code and the demo."""

BACKBONE_FILE = "backbone.keras"  # the trained backbone alone: images in [0, 1] -> {"B1": ..., "B5": ...}
SUMMARY_FILE = "summary.json"  # config, task, per-stage results
STATE_FILE = "state.json"  # progress; what --resume reads


def stage_backbone_file(stage_index):
    """The backbone as stage `stage_index` (1-based) left it."""
    return f"stage{stage_index}_backbone.keras"


def stage_head_file(stage_index):
    """Head g_i of stage `stage_index`: features of the stage's last block -> logits of its level."""
    return f"stage{stage_index}_head.keras"
