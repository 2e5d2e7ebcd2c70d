"""Train several models on one data set under the same protocol and print one JSON list of rows.

    python benchmarks/compare.py DATA_PATH --models rearm,lightgcn,freedom [--epochs N]
        [--seeds 2025,2026] [--preset NAME] [--set KEY=VALUE ...] [--out DIR]

DATA_PATH is a data set folder (any layout rearm reads) or "synthetic" for the embedded default.
Each (model, seed) runs in its own subprocess through rearm.experiments.run.train_run with a
configuration from rearm.experiments.config.resolve_config, so its peak resident memory
(ru_maxrss, which is process-wide) belongs to that run alone. A row:
  {"model", "seed", "best_epoch", "epochs_run", "valid": {...}, "test": {...},
   "train_epoch_s" (median), "peak_rss_mb", "run_dir"}
A preset that does not exist for a model is skipped for that model (noted in the row).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import rearm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(
    model: str,
    data: str | None,
    seed: int,
    epochs: int | None,
    preset: str | None,
    overrides: list[str],
    out: str,
) -> dict:
    """Train one configuration in this process; return its results dict."""
    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import train_run
    from rearm.models.presets import PRESETS
    from rearm.training.trainer import Progress

    note = None
    if preset is not None and preset not in PRESETS.get(model, {}):
        note = f"no preset {preset!r} for {model}; model defaults used"
        preset = None
    config = resolve_config(
        overrides=overrides, model=model, data=data, preset=preset, seed=seed, epochs=epochs
    )
    results = train_run(config, out, force=True, progress=Progress(enabled=False))
    if note:
        results["note"] = note
    return results


def row(results: dict, run_dir: str) -> dict:
    out = {
        "model": results["model"],
        "seed": results["seed"],
        "preset": results.get("preset"),
        "best_epoch": results["best_epoch"],
        "epochs_run": results["epochs_run"],
        "valid": results["valid"],
        "test": results["test"],
        "train_epoch_s": results["timing"]["train_epoch_s"],
        "peak_rss_mb": results["peak_rss_mb"],
        "run_dir": run_dir,
    }
    if "note" in results:
        out["note"] = results["note"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help='data set folder, or "synthetic"')
    parser.add_argument("--models", required=True, help="comma-separated MODELS names")
    parser.add_argument("--epochs", type=int, help="epoch budget (default: each model's)")
    parser.add_argument("--seeds", default="2025", help="comma-separated seeds")
    parser.add_argument("--preset", help="published settings by data set, e.g. baby")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", help="folder for the run directories (default: a temp dir)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    data = None if args.data == "synthetic" else args.data
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.one:
        # worker mode: exactly one model and one seed, results JSON on stdout
        (model,), (seed,) = models, seeds
        print(
            json.dumps(
                run_one(model, data, seed, args.epochs, args.preset, args.overrides, args.out)
            )
        )
        return 0

    from rearm.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (known: {', '.join(sorted(MODELS))})")
    root = Path(args.out or tempfile.mkdtemp(prefix="rearm-compare-"))
    rows = []
    for model in models:
        for seed in seeds:
            run_dir = root / f"{model}-seed{seed}"
            command = [sys.executable, str(Path(__file__).resolve()), args.data, "--one"]
            command += ["--models", model, "--seeds", str(seed), "--out", str(run_dir)]
            if args.epochs is not None:
                command += ["--epochs", str(args.epochs)]
            if args.preset:
                command += ["--preset", args.preset]
            for override in args.overrides:
                command += ["--set", override]
            print(f"compare: {model} seed {seed} -> {run_dir}", file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
                rows.append({"model": model, "seed": seed, "error": tail})
                continue
            rows.append(row(json.loads(done.stdout.strip().splitlines()[-1]), str(run_dir)))
    print(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
