#!/usr/bin/env bash
# Baselines on Baby (proxy features), 40 epochs each, defaults (published lr 1e-3), H100.
set -u
: "${OUT:?set OUT to a folder for the results}"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 ${PROXY:-../shared/tools/proxy_features.py} ${BABY:-../shared/data/amazon/baby} --out /tmp/baby > /dev/null
for model in mf lightgcn vbpr freedom; do
  timeout 110 python3 -m rearm.cli train --model $model --data /tmp/baby --device cuda \
      --epochs 40 --patience 1000 --quiet --out $OUT/$model 2>&1 | tail -2
  cp $OUT/$model/results.json $OUT/results_$model.json 2>/dev/null
  rm -rf $OUT/$model
done
