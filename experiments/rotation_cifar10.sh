#!/usr/bin/env bash
# The mode comparison: rotation on CIFAR-10 in psl, sl, psl_f and e2e mode at one epoch budget, then the
# all-blocks linear probes and kNN side by side (compare with ../shared/docs/calibration.md).
#   bash experiments/rotation_cifar10.sh [DATA_DIR] [RUNS_DIR] [EPOCHS_PER_STAGE] [PROBE_EPOCHS]
# Each training run is resumable: re-running the script continues unfinished runs and skips finished ones.
# A random-init backbone of the same architecture is evaluated as a reference row: at small budgets it
# shows how much of a block's accuracy is learned rather than given by the architecture.
set -euo pipefail
DATA_DIR=${1:-../shared/tfds}
RUNS=${2:-runs/rotation_cifar10}
EPOCHS=${3:-5}
PROBE_EPOCHS=${4:-5}
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
if [ ! -f "$RUNS/random_init.keras" ]; then
  $PY -c "import keras, sys; from psl_keras.backbones import build_backbone
keras.utils.set_random_seed(0); build_backbone('resnet18', 32, width=0.5).save(sys.argv[1])" "$RUNS/random_init.keras"
fi
RUN_LIST="e2e=$RUNS/e2e,psl=$RUNS/psl,sl=$RUNS/sl,psl_f=$RUNS/psl_f,random=$RUNS/random_init.keras"
# k=200 is the default; k=20 is the setting of calibration.md.
$PY evaluate.py --probe knn --k 200,20 --runs "$RUN_LIST" --data_dir "$DATA_DIR" --output_dir "$RUNS/eval_knn"
$PY evaluate.py --probe all-blocks --runs "$RUN_LIST" --data_dir "$DATA_DIR" --epochs "$PROBE_EPOCHS" \
  --output_dir "$RUNS/eval_linear"
