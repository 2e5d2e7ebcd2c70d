#!/usr/bin/env bash
# Converged Baby runs of the baselines at their `baby` presets, all models at once on one GPU.
#
#   OUT=out bash benchmarks/gpu_baby_baselines_converged.sh [MODEL ...]
#
# MODEL ... defaults to "mf lightgcn vbpr freedom"; any name of rearm.models.MODELS that has a
# `baby` preset can be added (a model without one runs at its defaults, noted in the summary).
# Each model trains with early stopping on valid Recall@20 (patience 20) and an epoch cap; a run
# still going after LIMIT_S seconds gets SIGINT, which the trainer answers by keeping its best
# epoch so far, so every model reports a number; the summary says which runs converged
# (stopped_early) and which were capped (interrupted or epoch cap reached). A SIGINT that lands
# while a run still loads its data or already writes its final evaluation loses that model's row
# ("error" in the summary): raise LIMIT_S. Expected on one H200: about LIMIT_S + 30 s in all.
# Output under $OUT: results_<model>.json (the run's results.json), metrics_<model>.jsonl (per-epoch
# losses and valid metrics), log_<model>.txt and summary.json (one row per model).
#
# Environment: DATA (default data/baby), DEVICE (default cuda), LIMIT_S (default 170),
# EPOCHS (cap, default 1000), PATIENCE (default 20), SMOKE=1 for a CPU check on the synthetic
# default (2 epochs, no preset, no GPU needed).
set -u
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
MODELS=("$@")
[ ${#MODELS[@]} -eq 0 ] && MODELS=(mf lightgcn vbpr freedom)
DATA=${DATA:-data/baby}
DEVICE=${DEVICE:-cuda}
LIMIT_S=${LIMIT_S:-170}
EPOCHS=${EPOCHS:-1000}
PATIENCE=${PATIENCE:-20}
if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu; EPOCHS=2; LIMIT_S=120
  RUN_ARGS=()
else
  RUN_ARGS=(--data "$DATA")
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for model in "${MODELS[@]}"; do
  args=("${RUN_ARGS[@]}")
  if [ "${SMOKE:-0}" != 1 ]; then
    if python3 -c "import sys; from rearm.models.presets import PRESETS; \
sys.exit(0 if 'baby' in PRESETS.get('$model', {}) else 1)"; then
      args+=(--preset baby)
    else
      echo "$model: no baby preset, running its defaults" >&2
    fi
  fi
  # SIGINT after LIMIT_S: the trainer stops after the current batch and keeps the best epoch
  timeout -s INT "$LIMIT_S" python3 -m rearm.cli train --model "$model" "${args[@]}" \
    --device "$DEVICE" --epochs "$EPOCHS" --patience "$PATIENCE" --quiet \
    --out "$WORK/$model" > "$OUT/log_$model.txt" 2>&1 &
done
wait

python3 - "$OUT" "$WORK" "$EPOCHS" "${MODELS[@]}" <<'EOF'
import json, shutil, sys
from pathlib import Path

out, work, cap, models = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
rows = []
for model in models:
    results = work / model / "results.json"
    if not results.exists():
        rows.append({"model": model, "error": f"no results; see log_{model}.txt"})
        continue
    shutil.copy(results, out / f"results_{model}.json")
    shutil.copy(work / model / "metrics.jsonl", out / f"metrics_{model}.jsonl")
    r = json.loads(results.read_text())
    rows.append({
        "model": model,
        "preset": r["preset"],
        "device": r["device"],
        "best_epoch": r["best_epoch"],
        "epochs_run": r["epochs_run"],
        "converged": bool(r["stopped_early"]),
        "capped": bool(r["interrupted"]) or (not r["stopped_early"] and r["epochs_run"] >= cap),
        "valid_recall20": r["valid"]["Recall@20"],
        "test_recall20": r["test"]["Recall@20"],
        "test_ndcg20": r["test"]["NDCG@20"],
        "train_epoch_s": r["timing"]["train_epoch_s"],
        "eval_s": r["timing"]["eval_s"],
        "total_s": r["timing"]["total_s"],
    })
(out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
for row in rows:
    print(json.dumps(row))
EOF
