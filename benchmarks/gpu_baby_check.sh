#!/usr/bin/env bash
# One device check: Baby (proxy features), baby preset, GPU; faithful vs frozen feature tables.
set -u
: "${OUT:?set OUT to a folder for the results}"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, numba, scipy, yaml; print('torch', torch.__version__, 'numba', numba.__version__)"
python3 ${PROXY:-../shared/tools/proxy_features.py} ${BABY:-../shared/data/amazon/baby} --out /tmp/baby
EPOCHS=${EPOCHS:-40}
for variant in faithful frozen; do
  extra=""; [ $variant = frozen ] && extra="--set train_feature_tables=false"
  timeout 230 python3 -m rearm.cli train --data /tmp/baby --preset baby --device cuda \
      --epochs $EPOCHS --patience 1000 --out $OUT/$variant $extra 2>&1 | grep -E "^epoch [0-9]+:|best epoch|error|Error" | tail -8
  cp $OUT/$variant/results.json $OUT/results_$variant.json 2>/dev/null
  cp $OUT/$variant/metrics.jsonl $OUT/metrics_$variant.jsonl 2>/dev/null
  rm -rf $OUT/$variant
done
