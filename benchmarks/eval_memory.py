"""What validation adds to a REARM process's memory, measured, next to `rearm plan`'s figure.

For each size, one process makes a synthetic data set, builds REARM with a preset (no training),
resets the kernel's peak-RSS mark (/proc/self/clear_refs) and runs the validation pass
(`evaluate_split`, full ranking in blocks of eval_batch_size users). It prints one JSON line per
size: the resident memory before the pass, the peak during it, their difference (what the pass
adds) and the plan's `evaluation_block` for the same data and settings.

    python benchmarks/eval_memory.py --sizes 20000x12000 40000x23000 --preset clothing
    python benchmarks/eval_memory.py --sizes 40000x23000 --set eval_batch_size=4096 --set rank=1

Linux only (VmHWM, clear_refs). A size takes from seconds to a few minutes, mostly graph
building.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(users: int, items: int, preset: str, overrides: list[str], widths: dict) -> dict:
    import gc

    from rearm.data.synth import make_synthetic
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import resolve_config
    from rearm.models import get_model
    from rearm.planning import data_shape, plan
    from rearm.training.trainer import evaluate_split, seed_everything

    dataset = make_synthetic(users, items, widths, interactions_per_user=7)
    config = resolve_config(preset=preset, overrides=overrides)
    eval_batch_size = config.training["eval_batch_size"]
    planned = plan(data_shape(dataset), config.hyperparameters, config.training)
    seed_everything(config.seed)
    model = get_model("rearm").from_dataset(dataset, seed=config.seed, **config.hyperparameters)
    protocol = get_protocol(config.protocol)
    protocol.mask_matrix(dataset, "valid")  # built once before, as in a run
    model.eval()
    gc.collect()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    metrics = evaluate_split(model, dataset, protocol, "valid", eval_batch_size)
    peak = _status_kb("VmHWM")
    return {
        "users": users,
        "items": items,
        "modalities": widths,
        "preset": preset,
        "overrides": overrides,
        "eval_batch_size": eval_batch_size,
        "rss_before_mb": round(before / 1024, 1),
        "peak_during_mb": round(peak / 1024, 1),
        "added_mb": round((peak - before) / 1024, 1),
        "planned_evaluation_block_mb": round(planned.components["evaluation_block"] / 2**20, 1),
        "planned_over_measured": round(
            planned.components["evaluation_block"] / 1024 / max(peak - before, 1), 3
        ),
        "recall@20": round(metrics["Recall@20"], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["20000x12000", "40000x23000"])
    parser.add_argument("--preset", default="clothing")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a setting, as in rearm"
    )
    parser.add_argument("--widths", default="image=512,text=384")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size here
    args = parser.parse_args()
    try:
        widths = {}
        for part in args.widths.split(","):
            name, _, width = part.partition("=")
            widths[name] = int(width)
            if not name or widths[name] < 1:
                raise ValueError
    except ValueError:
        parser.error(f"--widths: {args.widths!r} is not NAME=WIDTH pairs with widths >= 1")
    for size in args.sizes:
        users, _, items = size.partition("x")
        if not (users.isdigit() and items.isdigit() and int(users) > 0 and int(items) > 0):
            parser.error(f"--sizes: {size!r} is not USERSxITEMS with both >= 1")
    if args.one:
        users, items = (int(x) for x in args.one.split("x"))
        print(json.dumps(measure(users, items, args.preset, args.set, widths)))
        return 0
    for size in args.sizes:
        # each size in a fresh process, so that one size's freed memory does not hide the next's
        done = subprocess.run(
            [sys.executable, __file__, "--one", size, "--preset", args.preset]
            + ["--widths", args.widths]
            + [f"--set={setting}" for setting in args.set],
            capture_output=True,
            text=True,
            cwd=ROOT,
            # every block of 64 KB or more its own mapping, returned when freed: RSS then follows
            # the live tensors instead of what the allocator kept from graph building
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            print(f"eval_memory.py: {size}: {lines[-1]}", file=sys.stderr)
            return 2
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
