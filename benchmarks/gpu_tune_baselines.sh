#!/usr/bin/env bash
# Validation-only tuning of the baselines' per-data-set presets on a GPU: one
# benchmarks/tune_baselines.py study (each model's built-in grid, GRIDS in that file) per
# (model, data set), JOBS studies at a time on the one GPU.
#
#   OUT=out bash benchmarks/gpu_tune_baselines.sh [MODEL ...]
#
# MODEL ... defaults to "mf lightgcn vbpr freedom". Data sets: DATASETS (default
# "baby sports clothing"), read from $DATA_ROOT/<name> (default data/; vbpr and freedom need the
# <modality>_feat.npy files there, e.g. from `python ../shared/tools/proxy_features.py
# ../shared/data/amazon/sports --out data/sports`). Output: $OUT/tune_<model>_<data set>.json
# (every trial's valid score, the chosen point, its test score) and $OUT/log_<model>_<data>.txt.
# Copy the chosen points into rearm/models/presets.py and the records into benchmarks/results/.
#
# Environment: JOBS (default 4), PATIENCE (default 20), EPOCHS (cap, default 1000),
# LIMIT_S (per study, default 540; a study cut short keeps its finished trials, without a test
# score), DEVICE (default cuda), SMOKE=1 for a CPU check (synthetic data, 2 epochs, tiny grid).
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(mf lightgcn vbpr freedom)
DATASETS=${DATASETS:-"baby sports clothing"}
DATA_ROOT=${DATA_ROOT:-data}
JOBS=${JOBS:-4}
PATIENCE=${PATIENCE:-20}
EPOCHS=${EPOCHS:-1000}
LIMIT_S=${LIMIT_S:-540}
DEVICE=${DEVICE:-cuda}
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
  DATASETS=synthetic; DEVICE=cpu; EPOCHS=2; PATIENCE=2; LIMIT_S=300
  EXTRA=(--grid learning_rate=0.001,0.01 --set embedding_dim=16)
fi

for data_set in $DATASETS; do
  data="$DATA_ROOT/$data_set"
  [ "$data_set" = synthetic ] && data=synthetic
  for model in "${MODELS[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 2; done
    timeout -s INT "$LIMIT_S" python3 benchmarks/tune_baselines.py "$data" --model "$model" \
      --device "$DEVICE" --epochs "$EPOCHS" --patience "$PATIENCE" "${EXTRA[@]}" \
      --out "$OUT/tune_${model}_${data_set}.json" > "$OUT/log_${model}_${data_set}.txt" 2>&1 &
  done
done
wait
python3 - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("tune_*.json")):
    record = json.loads(path.read_text())
    chosen = record.get("chosen", {})
    test = chosen.get("test", {}).get("Recall@20")
    print(json.dumps({
        "study": path.name,
        "trials": len(record["trials"]),
        "chosen": chosen.get("settings"),
        "valid_recall20": chosen.get("valid", {}).get("Recall@20"),
        "test_recall20": test,
    }))
EOF
