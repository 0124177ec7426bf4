#!/usr/bin/env bash
# The issue-4 comparison: rotation on CIFAR-10 in psl, sl, psl_f and e2e mode at one epoch budget, then the
# all-blocks linear probes and kNN side by side (compare with ../shared/docs/calibration.md).
#   bash experiments/rotation_cifar10.sh [DATA_DIR] [RUNS_DIR] [EPOCHS_PER_STAGE]
# Each training run is resumable: re-running the script continues unfinished runs and skips finished ones.
set -euo pipefail
DATA_DIR=${1:-../shared/tfds}
RUNS=${2:-runs/rotation_cifar10}
EPOCHS=${3:-5}
PY=${PYTHON:-python}
mkdir -p "$RUNS"
for MODE in psl sl psl_f e2e; do
  OUT="$RUNS/$MODE"
  if [ -f "$OUT/summary.json" ]; then continue; fi
  RESUME=""; [ -f "$OUT/state.json" ] && RESUME="--resume"
  # e2e gets the same total budget: 3 x EPOCHS epochs over all blocks.
  $PY train.py --task rotation --config cifar10_small --mode "$MODE" --epochs_per_stage "$EPOCHS" \
    --knn_monitor --data_dir "$DATA_DIR" --output_dir "$OUT" $RESUME
done
RUN_LIST="e2e=$RUNS/e2e,psl=$RUNS/psl,sl=$RUNS/sl,psl_f=$RUNS/psl_f"
$PY evaluate.py --probe knn --runs "$RUN_LIST" --data_dir "$DATA_DIR" --output_dir "$RUNS/eval_knn"
$PY evaluate.py --probe all-blocks --runs "$RUN_LIST" --data_dir "$DATA_DIR" --epochs 5 \
  --output_dir "$RUNS/eval_linear"
