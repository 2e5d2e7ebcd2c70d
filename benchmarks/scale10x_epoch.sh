#!/usr/bin/env bash
# One epoch of REARM at 10x Clothing (issue 13), started or continued.
#
#   bash benchmarks/scale10x_epoch.sh frozen      # train_feature_tables=false
#   bash benchmarks/scale10x_epoch.sh faithful    # the published model (about 17.3 GB)
#
# An epoch takes about 6 hours on a 2-core CPU. The run writes a resume state every 20 minutes
# and on SIGTERM, so it can be stopped (kill -TERM the python process; it saves its position
# after the current step) and continued by running the same command again: the script resumes
# the run when its folder holds a resume.pt. Each process is timed by /usr/bin/time -v; its
# output, the training log and start / end lines go to RUNS/<tag>.<n>.{out,err,status}, n
# counting processes. The data set is made first if it is missing (about 2 minutes).
#
# Data and runs live outside the work tree, in $SCALE10X_DIR (default ~/rearm-scale10x:
# data/scale10x and runs/), because a work tree can be laid anew between work sessions while
# the machine, its home folder and the graph cache (~/.cache/rearm) are kept.
set -u
kind=${1:-}
case $kind in
  frozen) tag=scale10x-frozen; extra=(--set train_feature_tables=false) ;;
  faithful) tag=scale10x-faithful; extra=() ;;
  *) echo "scale10x_epoch.sh: kind must be frozen or faithful, got ${kind:-nothing}" >&2; exit 2 ;;
esac
root=${SCALE10X_DIR:-$HOME/rearm-scale10x}
data=$root/data/scale10x
runs=$root/runs
if [ ! -f "$data/train.npy" ]; then
  mkdir -p "$root/data"
  python -c "import sys; from rearm.data.synth import make_synthetic, write_rearm_layout; write_rearm_layout(make_synthetic(400_000, 230_000, {'image': 512, 'text': 384}, interactions_per_user=7), sys.argv[1])" "$data" || exit
fi
mkdir -p "$runs"
n=$(find "$runs" -maxdepth 1 -name "$tag.*.status" | wc -l)
log=$runs/$tag.$n
if [ -f "$runs/$tag/resume.pt" ]; then
  args=(--resume "$runs/$tag")
else
  args=(--data "$data" --preset clothing "${extra[@]}" --set resume_every_s=1200 \
    --epochs 1 --out "$runs/$tag")
fi
{ date -u +"started %Y-%m-%dT%H:%M:%SZ"; uptime; echo "rearm train ${args[*]}"; } > "$log.status"
/usr/bin/time -v rearm train "${args[@]}" > "$log.out" 2> "$log.err"
code=$?
{ echo "exit $code"; date -u +"ended %Y-%m-%dT%H:%M:%SZ"; uptime; } >> "$log.status"
exit $code
