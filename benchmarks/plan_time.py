"""`rearm plan`'s time estimate against measured training steps, on this machine.

    python benchmarks/plan_time.py --data data/baby:baby --data data/clothing:clothing
    python benchmarks/plan_time.py --data data/baby:baby --calibrations 3 --steps 8 --out t.json

Each --data is PATH:PRESET. All calibrations (`rearm.planning.calibrate`, --calibrations of
them) are taken first, in this process; then, for each data set, the plan's seconds per step
under each calibration, and the measured seconds per step of `benchmarks/training.py --steps S
--warmup 1 --no-floor` (run as a subprocess, one data set at a time, with the plan's settings:
the same preset). Prints one JSON object (and writes it to --out): the calibrations and, per
data set, the estimates, the first calibration's parts, the measurement and estimate /
measured. Run it on a quiet machine: both sides are timings.
"""

# ruff: noqa: I001  (rearm is imported before torch on purpose)

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rearm  # noqa: F401  (before torch allocates: rearm/__init__.py sets its allocator)

HERE = Path(__file__).resolve().parent


def _data_set(text: str) -> tuple[str, str]:
    path, sep, preset = text.rpartition(":")
    if not sep or not path or not preset:
        raise argparse.ArgumentTypeError(f"expected PATH:PRESET, got {text!r}")
    return path, preset


def measure(path: str, preset: str, steps: int) -> dict:
    """Seconds per step of the trainer's own step on `path`, from benchmarks/training.py."""
    command = [
        sys.executable,
        str(HERE / "training.py"),
        "--data",
        path,
        "--preset",
        preset,
        "--no-floor",
        "--steps",
        str(steps),
        "--warmup",
        "1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SystemExit(f"plan_time.py: {' '.join(command)} failed: {tail[0]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "s_per_step": record["train_epoch_s"] / record["steps_per_epoch"],
        "steps_per_epoch": record["steps_per_epoch"],
        "timed_steps": record.get("extrapolated_from_steps"),
        "load_average_before": record.get("load_average_before"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=_data_set, action="append", required=True)
    parser.add_argument("--calibrations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per data set")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.calibrations < 1 or args.steps < 1:
        parser.error("--calibrations and --steps must be >= 1")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist")

    from rearm import planning
    from rearm.data import load_dataset
    from rearm.errors import RearmError
    from rearm.experiments.config import resolve_config

    # every data set is read (and its preset resolved) before the calibrations: bad input
    # stops the run at once
    try:
        shapes = {
            path: (
                resolve_config(model="rearm", data=path, preset=preset),
                planning.data_shape(load_dataset(path)),
            )
            for path, preset in args.data
        }
    except RearmError as error:
        print(f"plan_time.py: error: {error}", file=sys.stderr)
        return 2

    calibrations = []
    for number in range(args.calibrations):
        started = time.perf_counter()
        calibration = planning.calibrate()
        wall = time.perf_counter() - started
        calibrations.append(calibration)
        print(f"calibration {number + 1}/{args.calibrations}: {wall:.1f} s", file=sys.stderr)

    results = {}
    for path, preset in args.data:
        config, shape = shapes[path]
        plans = [
            planning.plan(
                shape, config.hyperparameters, config.training, model="rearm", calibration=c
            )
            for c in calibrations
        ]
        estimates = [p.epoch["seconds_per_step"] for p in plans]
        print(f"{path}: planned {estimates} s per step; measuring", file=sys.stderr)
        measured = measure(path, preset, args.steps)
        results[path] = {
            "preset": preset,
            "users": shape.num_users,
            "items": shape.num_items,
            "train_interactions": shape.train_interactions,
            "modalities": shape.modalities,
            "planned_s_per_step": estimates,
            "planned_parts_s_per_step": {
                name: round(value / plans[0].steps_per_epoch, 4)
                for name, value in plans[0].epoch["parts_s_per_epoch"].items()
            },
            "measured": measured,
            "planned_over_measured": [round(e / measured["s_per_step"], 3) for e in estimates],
        }
        print(f"{path}: measured {measured['s_per_step']:.3f} s per step", file=sys.stderr)
    record = {"load_average": os.getloadavg(), "calibrations": calibrations, "data": results}
    text = json.dumps(record, indent=1)
    if args.out:
        with tempfile.NamedTemporaryFile(
            "w", dir=Path(args.out).resolve().parent, delete=False, suffix=".tmp"
        ) as handle:
            handle.write(text + "\n")
        os.replace(handle.name, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
