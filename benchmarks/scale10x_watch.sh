#!/usr/bin/env bash
# Watch and record a process of benchmarks/scale10x_epoch.sh (issue 13).
#
#   bash benchmarks/scale10x_watch.sh log faithful       # start the two loggers (returns at once)
#   bash benchmarks/scale10x_watch.sh record faithful OUT.txt
#
# `log` waits (up to 10 minutes) for the training process of that kind's newest log
# RUNS/<tag>.<n> to start, then, while it runs, appends to RUNS/<tag>.<n>.steps each minute the
# UTC time, the last step it logged and the load average, and to RUNS/<tag>.<n>.rss every 30 s
# the process's VmHWM and VmRSS. Both loggers run detached (setsid) and end with the process;
# a second `log` for the same process is refused.
# `record` writes, once the process has ended, what its README row is made from: the log lines
# (progress lines only first and last), `/usr/bin/time -v`, the status file and both logger
# files, to OUT (through a temporary file).
set -u
action=${1:-}
kind=${2:-}
case $kind in
  frozen | faithful) tag=scale10x-$kind ;;
  *) echo "scale10x_watch.sh: kind must be frozen or faithful, got ${kind:-nothing}" >&2; exit 2 ;;
esac
runs=${SCALE10X_DIR:-$HOME/rearm-scale10x}/runs
n=$(find "$runs" -maxdepth 1 -name "$tag.*.status" 2>/dev/null | wc -l)
if [ "$n" -eq 0 ]; then
  echo "scale10x_watch.sh: no $tag process has been started in $runs" >&2
  exit 2
fi
log=$runs/$tag.$((n - 1))
pattern="python.*bin/rearm train .*$runs/$tag( |\$)"

case $action in
  log)
    if pgrep -f "scale10x_watch.sh (steps|rss) $kind $log\$" > /dev/null; then
      echo "scale10x_watch.sh: $log is already watched" >&2
      exit 2
    fi
    for what in steps rss; do
      (setsid nohup bash "$0" "$what" "$kind" "$log" > /dev/null 2>&1 &)
    done
    echo "watching $log: $log.steps and $log.rss"
    ;;
  steps | rss)
    log=$3
    for _ in $(seq 120); do pgrep -f "$pattern" > /dev/null && break; sleep 5; done
    pid=$(pgrep -f "$pattern" | head -1)
    [ -n "$pid" ] || exit 1
    while [ -d "/proc/$pid" ]; do
      if [ "$action" = steps ]; then
        step=$(tr '\r' '\n' < "$log.err" | grep -o '\[[0-9]*/[0-9]*\]' | tail -1)
        [ -n "$step" ] || step="(no step yet: $(tr '\r' '\n' < "$log.err" | grep -v '^\s*$' | tail -1 | cut -c1-80))"
        echo "$(date -u +%H:%M:%S) $step $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log.steps"
        sleep 60
      else
        echo "$(date -u +%H:%M:%S) $(grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >> "$log.rss"
        sleep 30
      fi
    done
    ;;
  record)
    out=${3:-}
    if [ -z "$out" ]; then
      echo "scale10x_watch.sh: record needs an output file" >&2
      exit 2
    fi
    if pgrep -f "$pattern" > /dev/null; then
      echo "scale10x_watch.sh: $log is still running; stop it first (kill -TERM its python process)" >&2
      exit 2
    fi
    lines=$(tr '\r' '\n' < "$log.err")
    {
      grep -v -e '^epoch [0-9]* \[' -e $'^\t' -e '^Command exited' <<< "$lines" | grep -v '^\s*$'
      grep '^Command exited' <<< "$lines"
      grep '^epoch [0-9]* \[' <<< "$lines" | sed -n '1p;$p'
      grep $'^\t' <<< "$lines"
      echo "--- status"
      cat "$log.status"
      echo "--- step count each minute (UTC time, last step logged, load average)"
      cat "$log.steps" 2>/dev/null
      echo "--- VmHWM and VmRSS of the process every 30 s"
      cat "$log.rss" 2>/dev/null
    } > "$out.tmp" && mv "$out.tmp" "$out"
    echo "wrote $out"
    ;;
  *)
    echo "scale10x_watch.sh: action must be log or record, got ${action:-nothing}" >&2
    exit 2
    ;;
esac
