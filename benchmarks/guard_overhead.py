"""Cost of the divergence guard (rearm.training.guards.DivergenceGuard) on training time.

    python benchmarks/guard_overhead.py [--data DIR --preset baby] [--device cuda] [--epochs 2]

Trains REARM twice from the same seed, with the guard and with its per-step hook replaced by a
no-op, and prints one JSON object (median train seconds per epoch of each, the ratio) that is
also written to $OUT/guard_overhead.json (default: a temporary folder). Without --data it uses a
small synthetic data set, so it runs on a CPU in about a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import load_run_data
    from rearm.models import get_model
    from rearm.training import guards
    from rearm.training.trainer import Progress, fit, resolve_device, seed_everything

    config = resolve_config(data=args.data, preset=args.preset, device=args.device)
    if args.data is None:
        from rearm.data.synth import make_synthetic

        dataset = make_synthetic(num_users=600, num_items=300, seed=1)
    else:
        dataset = load_run_data(args.data)
    device = resolve_device(config.device)
    hook = guards.DivergenceGuard.after_backward
    timings = {}
    for variant in ("guard", "no_guard"):
        guards.DivergenceGuard.after_backward = (
            hook if variant == "guard" else (lambda self, epoch, step, terms: None)
        )
        seed_everything(config.seed)
        model = (
            get_model(config.model)
            .from_dataset(dataset, seed=config.seed, **config.hyperparameters)
            .to(device)
        )
        training = config.training
        result = fit(
            model,
            dataset,
            get_protocol(config.protocol),
            epochs=args.epochs,
            patience=args.epochs,
            batch_size=training["batch_size"],
            learning_rate=training["learning_rate"],
            weight_decay=training["weight_decay"],
            seed=config.seed,
            progress=Progress(enabled=False),
        )
        timings[variant] = statistics.median(record.train_s for record in result.history)
    guards.DivergenceGuard.after_backward = hook
    report = {
        "data": args.data or "synthetic 600 x 300",
        "device": str(device),
        "epochs": args.epochs,
        "train_epoch_s": timings,
        "ratio": round(timings["guard"] / timings["no_guard"], 4),
    }
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="rearm-guard-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "guard_overhead.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
