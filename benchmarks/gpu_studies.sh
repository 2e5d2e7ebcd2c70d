#!/usr/bin/env bash
# The `ablation` study template on Baby (stand-in features), baby preset, standard protocol,
# 1 seed, 4 runs at a time sharing one GPU, a fixed epoch budget; then the study report.
#
#   OUT=out bash benchmarks/gpu_studies.sh              # GPU: data/baby, --device cuda
#   OUT=out SMOKE=1 bash benchmarks/gpu_studies.sh      # CPU smoke test on tiny synthetic data
#
# Settings (environment): STUDY_EPOCHS (default 30; 1 in smoke mode), DATA (default data/baby),
# STUDY_JOBS (default 4; 2 in smoke mode), STUDY_TIMEOUT (seconds, default 330: then the study
# is stopped as by Ctrl-C and the report covers the completed cells), STUDY_DIR (the study's run folders, default a temp
# folder: each Baby run keeps a ~1 GB model bundle and checkpoint, too much to return).
# Under $OUT: study.json, report/ (report.md/.csv/.tex/.json, PNGs), runs/<cell>/ light files
# (config.yaml, protocol.json, metrics.jsonl, per_user.npz, results.json), logs/, and
# gpu_studies.json (wall time, epochs, device).
set -euo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
STUDY_DIR=${STUDY_DIR:-$(mktemp -d)/ablation-baby}
STUDY_TIMEOUT=${STUDY_TIMEOUT:-330}
if [[ "${SMOKE:-0}" == 1 ]]; then
  DATA=$OUT/smoke-data
  python3 -m rearm.cli data synth --out "$DATA" --users 200 --items 120 --seed 1 \
    --modalities image:16,text:8 --force > /dev/null
  DEVICE=cpu; JOBS=${STUDY_JOBS:-2}; EPOCHS=${STUDY_EPOCHS:-1}
else
  DATA=${DATA:-data/baby}
  DEVICE=cuda; JOBS=${STUDY_JOBS:-4}; EPOCHS=${STUDY_EPOCHS:-30}
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
start=$(date +%s)
status=0
# After STUDY_TIMEOUT seconds the study gets SIGTERM, which it treats as Ctrl-C: it stops the
# running cells and records them as interrupted; the report then covers the completed cells.
timeout --signal=TERM --kill-after=30 "$STUDY_TIMEOUT" \
  python3 -m rearm.cli study run ablation --data "$DATA" --preset baby --protocol standard \
  --seeds 1 --epochs "$EPOCHS" --patience "$EPOCHS" --jobs "$JOBS" --device "$DEVICE" \
  --out "$STUDY_DIR" || status=$?
end=$(date +%s)
python3 -m rearm.cli study report "$STUDY_DIR" --out "$OUT/report" > "$OUT/report_stdout.md" || true
cp "$STUDY_DIR/study.json" "$OUT/"
cp -r "$STUDY_DIR/logs" "$OUT/"
for run in "$STUDY_DIR"/runs/*/; do
  name=$(basename "$run")
  mkdir -p "$OUT/runs/$name"
  for file in config.yaml protocol.json metrics.jsonl per_user.npz results.json; do
    [[ -f "$run/$file" ]] && cp "$run/$file" "$OUT/runs/$name/"
  done
done
python3 - "$OUT" "$EPOCHS" "$DEVICE" "$JOBS" "$((end - start))" "$status" <<'PY'
import json, sys
out, epochs, device, jobs, wall, status = sys.argv[1:]
study = json.load(open(f"{out}/study.json"))
record = {"epochs": int(epochs), "device": device, "jobs": int(jobs),
          "study_wall_s": int(wall), "study_exit_code": int(status),
          "study_status": study["status"], "cells": study["counts"],
          "cell_seconds": {c["label"]: c.get("seconds") for c in study["cells"]}}
try:
    import torch
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
except ImportError:
    pass
with open(f"{out}/gpu_studies.json", "w") as handle:
    json.dump(record, handle, indent=2)
print(json.dumps(record))
PY
cat "$OUT/report_stdout.md"
# 124: stopped by STUDY_TIMEOUT as planned (recorded in gpu_studies.json), not a failure
[[ $status == 124 ]] && status=0
exit $status
