"""Does a run killed with SIGKILL and resumed end where the same run never stopped ends?

Trains one configuration three times through the `rearm` command: twice straight (how much two
identical runs differ on this device: nothing on a CPU; on a GPU, atomics in sparse products and
scatters may differ in rounding) and once with a resume state after every step, killed with
SIGKILL when a state of epoch `--kill-epoch` has been written, then `rearm train --resume`. It
prints one JSON object: the largest parameter difference and the metric differences of
straight vs straight and straight vs resumed, and `exact` (resumed differs from straight by no
more than straight differs from straight). Exit status 0 when exact, 1 otherwise.

    python benchmarks/resume_check.py --device cpu --model rearm --epochs 4
    python benchmarks/resume_check.py --device cuda --data data/baby --preset baby --epochs 3
"""

# ruff: noqa: I001  (rearm first: it sets the allocator's environment before torch loads)
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rearm  # noqa: F401
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import at_least, run  # noqa: E402

from rearm.errors import RunError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _train(argv: list[str], log: Path) -> None:
    command = [sys.executable, "-m", "rearm.cli", "train", *argv]
    with open(log, "w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=_env())
    if code != 0:
        last = log.read_text().strip().splitlines()[-1:] or [""]
        raise RunError(f"`rearm train {' '.join(argv)}` exited {code}: {last[0]} (log: {log})")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def _kill_when_saved(argv: list[str], epoch: int, log: Path) -> str:
    """Start training, SIGKILL it once a resume state of `epoch` is saved; the line it saw."""
    command = [sys.executable, "-m", "rearm.cli", "train", *argv]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env()
    )
    seen = None
    with open(log, "w") as handle:
        for line in process.stderr:
            handle.write(line)
            if line.startswith(f"resume state saved (epoch {epoch},"):
                process.send_signal(signal.SIGKILL)
                seen = line.strip()
                break
    process.wait()
    if seen is None:
        raise RunError(
            f"the run ended (exit {process.returncode}) before a resume state of epoch {epoch} "
            f"(log: {log})"
        )
    return seen


def _compare(a: Path, b: Path) -> dict:
    first = torch.load(a / "checkpoint.pt", map_location="cpu", weights_only=True)
    second = torch.load(b / "checkpoint.pt", map_location="cpu", weights_only=True)
    largest = max(
        (value.double() - second["state_dict"][name].double()).abs().max().item()
        for name, value in first["state_dict"].items()
        if value.numel()
    )
    results = [json.loads((run / "results.json").read_text()) for run in (a, b)]
    losses = [
        [
            {k: v for k, v in json.loads(line).items() if k.startswith("loss_")}
            for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        for run in (a, b)
    ]
    return {
        "best_epoch": [results[0]["best_epoch"], results[1]["best_epoch"]],
        "max_parameter_difference": largest,
        "test_metric_differences": {
            name: abs(results[0]["test"][name] - results[1]["test"][name])
            for name in ("Recall@20", "NDCG@20")
        },
        "losses_equal": losses[0] == losses[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rearm")
    parser.add_argument("--data", help="data set (default: the embedded synthetic one)")
    parser.add_argument("--preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=at_least(2), default=4)
    parser.add_argument("--kill-epoch", type=at_least(1), default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--work", help="folder for the three runs (default: a temporary one)")
    args = parser.parse_args()
    if args.kill_epoch > args.epochs:
        parser.error(f"--kill-epoch {args.kill_epoch} is after the last epoch ({args.epochs})")
    work = Path(args.work or tempfile.mkdtemp(prefix="resume_check-"))
    work.mkdir(parents=True, exist_ok=True)
    common = ["--model", args.model, "--device", args.device, "--epochs", str(args.epochs)]
    common += ["--patience", str(args.epochs)]
    common += ["--data", args.data] if args.data else []
    common += ["--preset", args.preset] if args.preset else []
    for override in args.overrides:
        common += ["--set", override]
    started = time.perf_counter()
    for name in ("straight", "again"):
        _train([*common, "--quiet", "--out", str(work / name)], work / f"{name}.log")
    saving = [*common, "--set", "resume_every_s=0.000001", "--out", str(work / "resumed")]
    seen = _kill_when_saved(saving, args.kill_epoch, work / "killed.log")
    _train(["--resume", str(work / "resumed"), "--device", args.device], work / "resume.log")
    noise = _compare(work / "straight", work / "again")
    resumed = _compare(work / "straight", work / "resumed")
    record = {
        "model": args.model,
        "data": args.data or "synthetic default",
        "device": args.device,
        "torch": torch.__version__,
        "epochs": args.epochs,
        "killed_after": seen,
        "straight_vs_straight": noise,
        "straight_vs_resumed": resumed,
        "exact": resumed["max_parameter_difference"] <= noise["max_parameter_difference"]
        and resumed["best_epoch"][0] == resumed["best_epoch"][1],
        "work": str(work),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(record, indent=2))
    return 0 if record["exact"] else 1


if __name__ == "__main__":
    sys.exit(run(main))
