#!/usr/bin/env bash
# One GPU session's checks, in phases, each bounded in time, everything returned as one tarball.
#
#   OUT=out bash benchmarks/gpu_session.sh speed            # throughput (issue 10), ~5 min
#   OUT=out bash benchmarks/gpu_session.sh studies          # Baby ablation study + baselines, ~5 min
#   OUT=out bash benchmarks/gpu_session.sh resume           # SIGKILL + --resume on the GPU, ~3 min
#
# The machine gets only the repository: Baby with stand-in features is rebuilt there from the
# public split and the proxy-feature tool, carried in .devcarry/ (proxy_features.py, baby/*.npy),
# unless data/baby is already there. Results: $OUT/<phase>.tgz (every file the phase wrote) and
# the phase's summary on stdout.
set -u
: "${OUT:?set OUT to a folder for the results}"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
phase=${1:?phase: speed, studies or resume}
work=$(mktemp -d)/$phase
mkdir -p "$work"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numba, scipy, yaml; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
if [ ! -f data/baby/image_feat.npy ]; then
  python3 .devcarry/proxy_features.py .devcarry/baby --out data/baby
fi
case $phase in
  speed)
    OUT=$work timeout -s INT 330 python3 benchmarks/gpu_throughput.py --data data/baby \
      2>&1 | tee "$work/gpu_throughput.log"
    ;;
  studies)
    # the ablation study (4 cells at a time) and the converged baselines share the GPU
    (OUT=$work/ablation STUDY_TIMEOUT=${STUDY_TIMEOUT:-270} STUDY_EPOCHS=${STUDY_EPOCHS:-30} \
      bash benchmarks/gpu_studies.sh > "$work/ablation.log" 2>&1) &
    (OUT=$work/baselines LIMIT_S=${LIMIT_S:-240} \
      bash benchmarks/gpu_baby_baselines_converged.sh ${MODELS:-mf lightgcn vbpr freedom bm3 dragon mgcn lgmrec} \
      > "$work/baselines.log" 2>&1) &
    wait
    tail -n 40 "$work/ablation.log"
    cat "$work/baselines/summary.json" 2>/dev/null || tail -n 20 "$work/baselines.log"
    ;;
  resume)
    # how far a killed and resumed run lands from a straight one, next to how far two straight
    # runs land from each other on this GPU (atomics); exact on a CPU
    for model in rearm freedom; do
      timeout -s INT 170 python3 benchmarks/resume_check.py --device cuda --model $model \
        --data data/baby --preset baby --epochs 3 --work "$work/$model" \
        > "$work/$model.json" 2> "$work/$model.err"
      echo "$model: exit $?"; cat "$work/$model.json"; tail -n 3 "$work/$model.err"
    done
    ;;
  *) echo "unknown phase $phase" >&2; exit 2 ;;
esac
tar czf "$OUT/$phase.tgz" -C "$(dirname "$work")" "$phase"
ls -la "$OUT"
