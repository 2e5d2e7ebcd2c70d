"""Validation-only grid search for one model on one data set; writes a JSON study record.

    python benchmarks/tune_baselines.py DATA --model mf --grid reg_weight=0.01,0.1 \\
        --grid learning_rate=0.001,0.01 [--set KEY=VALUE ...] [--preset NAME] \\
        [--epochs 400] [--patience 20] [--seed 2025] [--threads 1] --out RESULT.json

DATA is a data set folder (any layout rearm reads) or "synthetic" for the embedded default.
Every point of the Cartesian product of the --grid axes is one trial: the run configuration is
resolved exactly as `rearm train --model MODEL --data DATA [--preset NAME] --set ...` would
resolve it (rearm.experiments.config.resolve_config), the model is built with from_dataset and
trained with the ordinary trainer (rearm.training.trainer.fit: early stopping on the protocol's
validation metric, Recall@20 for the standard protocol).

Selection uses the validation split only: the chosen trial is the one with the highest best-epoch
validation metric (ties: the earlier trial). The test split is evaluated once, for the chosen
trial, from its best-epoch state; no other trial's test score is computed. The record
  {"model", "data", "protocol", "selection_metric", "seed", "epochs", "patience", "grid",
   "fixed", "base_preset", "machine", "command",
   "trials": [{"trial", "settings", "valid", "best_epoch", "epochs_run", "stopped_early",
               "interrupted", "train_epoch_s", "eval_s", "wall_s"}, ...],
   "chosen": {"trial", "settings", "valid", "best_epoch", "test"}}
is rewritten (atomically) after every trial, so an interrupted study keeps what it finished
("chosen" then describes the best finished trial and has no test score).
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

try:
    import rearm  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# The grid of each baseline when no --grid is given. Sources:
#   mf: a documented small grid (Rendle et al. publish none for these data sets): N(0, 0.01^2)
#     initialisation (the Baby diagnosis, benchmarks/results/diagnose_mf_baby_lr1e-3.json), the L2
#     weight around the values the peer implementation's tuning (0.05) and the diagnosis
#     (0.1) point to, with and without the peer's item bias; Adam at lr 1e-2, since at 1e-3 a
#     strong L2 weight needs ~175 epochs (issue 12) and Baby epochs were ~20 s on the shared CPU.
#   lightgcn: He et al. SIGIR 2020 tune lambda in {1e-6, ..., 1e-2} at lr 1e-3 with L = 3; the
#     1e-6 end is dropped (indistinguishable from 1e-5 at these epoch counts).
#   vbpr: no grid is published for these splits; the L2 weight as for mf (the ID factors overfit
#     the same way), Adam at lr 1e-3.
#   freedom: Zhou & Shen ACM MM 2023: lambda (`modality_weight`) in {0, 1e-5, 1e-4, 1e-3} x
#     edge pruning ratio in {0.8, 0.9}, at lr 1e-3.
GRIDS: dict[str, list[str]] = {
    "mf": [
        "learning_rate=0.01",
        "init_std=0.01",
        "reg_weight=0.03,0.1",
        "item_bias=false,true",
    ],
    "lightgcn": ["learning_rate=0.001", "reg_weight=0.00001,0.0001,0.001,0.01"],
    "vbpr": ["learning_rate=0.001", "reg_weight=0.001,0.01,0.1"],
    "freedom": [
        "learning_rate=0.001",
        "modality_weight=0,0.00001,0.0001,0.001",
        "pruning_ratio=0.8,0.9",
    ],
}


def parse_grid(axes: list[str]) -> dict[str, list]:
    """['key=v1,v2', ...] -> {key: [v1, v2]} with YAML-parsed values (numbers, booleans)."""
    from rearm.errors import ConfigError
    from rearm.experiments.config import parse_override

    grid: dict[str, list] = {}
    for text in axes:
        key, raw = text.split("=", 1) if "=" in text else (text, "")
        if not key or not raw:
            raise ConfigError(f"--grid {text!r}: expected key=value1,value2,...")
        if key in grid:
            raise ConfigError(f"--grid {key}: axis given twice")
        grid[key] = [parse_override(f"{key}={value}")[1] for value in raw.split(",")]
    return grid


def trial_settings(grid: dict[str, list]) -> list[dict]:
    """The Cartesian product of the axes, in the order given (last axis fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def run_trial(config_dict: dict, threads: int, label: str) -> tuple[dict, dict]:
    """Train one resolved configuration; -> (trial record without settings, best-epoch state on
    the CPU). A plain function of its configuration, so it runs alike in this process or in a
    worker process (--jobs)."""
    import torch

    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import RunConfig
    from rearm.models import get_model
    from rearm.training.trainer import Progress, fit, resolve_device, seed_everything

    if threads:
        torch.set_num_threads(threads)
    config = RunConfig(**config_dict)
    dataset = _dataset(config.data)
    protocol = get_protocol(config.protocol)
    started = time.perf_counter()
    seed_everything(config.seed)
    model = (
        get_model(config.model)
        .from_dataset(dataset, seed=config.seed, **config.hyperparameters)
        .to(resolve_device(config.device))
    )
    training = config.training
    log = Progress(every_s=60.0)
    result = fit(
        model,
        dataset,
        protocol,
        epochs=training["epochs"],
        patience=training["patience"],
        batch_size=training["batch_size"],
        learning_rate=training["learning_rate"],
        weight_decay=training["weight_decay"],
        seed=config.seed,
        eval_batch_size=training["eval_batch_size"],
        progress=log,
    )
    value = result.best_valid[protocol.selection_metric]
    log.line(
        f"{label}: valid {protocol.selection_metric}={value:.4f} "
        f"(best epoch {result.best_epoch} of {result.epochs_run})"
    )
    trial = {
        "valid": result.best_valid,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "train_epoch_s": round(statistics.median(r.train_s for r in result.history), 3),
        "eval_s": round(statistics.median(r.eval_s for r in result.history), 3),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return trial, state


_DATASETS: dict = {}


def _dataset(data: str | None):
    """The data set of `data` (None: the synthetic default), read once per process."""
    from rearm.experiments.run import load_run_data

    if data not in _DATASETS:
        _DATASETS[data] = load_run_data(data)
    return _DATASETS[data]


def run_study(args: argparse.Namespace) -> dict:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.config import resolve_config
    from rearm.io import write_json
    from rearm.models import get_model
    from rearm.training.trainer import Progress, evaluate_split, resolve_device

    grid = parse_grid(args.grid)
    settings = trial_settings(grid)
    data = None if args.data == "synthetic" else args.data
    # every trial's configuration is resolved (and checked) before any data is read
    configs = [
        resolve_config(
            overrides=list(args.set) + [f"{key}={value}" for key, value in point.items()],
            model=args.model,
            data=data,
            preset=args.preset,
            seed=args.seed,
            epochs=args.epochs,
            patience=args.patience,
            device=args.device,
        )
        for point in settings
    ]
    protocol = get_protocol(configs[0].protocol)
    dataset = _dataset(data)
    record: dict = {
        "model": args.model,
        "data": args.data,
        "base_preset": args.preset,
        "protocol": protocol.name,
        "selection_metric": protocol.selection_metric,
        "seed": args.seed,
        "epochs": args.epochs,
        "patience": args.patience,
        "grid": grid,
        "fixed": list(args.set),
        "machine": machine(),
        "command": " ".join(["python", "benchmarks/tune_baselines.py", *args.argv]),
        "trials": [],
    }
    log = Progress()
    finished: dict[int, dict] = {}
    best: tuple[float, int, dict] | None = None  # (valid value, trial index, state)

    def collect(index: int, trial: dict, state: dict) -> None:
        nonlocal best
        finished[index] = {"trial": index, "settings": settings[index], **trial}
        record["trials"] = [finished[i] for i in sorted(finished)]
        value = trial["valid"][protocol.selection_metric]
        if best is None or value > best[0] or (value == best[0] and index < best[1]):
            best = (value, index, state)
        chosen = finished[best[1]]
        preset: dict = {"hyperparameters": {}, "training": {}}
        for key, val in chosen["settings"].items():
            section = "training" if key in configs[best[1]].training else "hyperparameters"
            preset[section][key] = val
        record["chosen"] = {
            "trial": best[1],
            "settings": chosen["settings"],
            "valid": chosen["valid"],
            "best_epoch": chosen["best_epoch"],
            "preset": preset,
        }
        write_json(args.out, record)

    labels = [f"trial {i + 1}/{len(settings)} {point}" for i, point in enumerate(settings)]
    if args.jobs <= 1:
        for index, config in enumerate(configs):
            log.line(labels[index])
            collect(index, *run_trial(config.to_dict(), args.threads, labels[index]))
            if finished[index]["interrupted"]:
                break
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(run_trial, config.to_dict(), args.threads, labels[index]): index
                for index, config in enumerate(configs)
            }
            for future in as_completed(futures):
                collect(futures[future], *future.result())

    complete = len(finished) == len(settings) and not any(
        trial["interrupted"] for trial in finished.values()
    )
    if best is not None and complete:
        value, index, state = best
        config = configs[index]
        model = (
            get_model(config.model)
            .from_dataset(dataset, seed=config.seed, **config.hyperparameters)
            .to(resolve_device(config.device))
        )
        model.load_state_dict(state)
        test = evaluate_split(model, dataset, protocol, "test", config.training["eval_batch_size"])
        record["chosen"]["test"] = test
        log.line(
            f"chosen {labels[index]}: valid {value:.4f}, test Recall@20={test['Recall@20']:.4f} "
            f"NDCG@20={test['NDCG@20']:.4f}"
        )
        write_json(args.out, record)
    return record


def main(argv: list[str] | None = None) -> int:
    from rearm.errors import RearmError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help='data set folder, or "synthetic"')
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        help="KEY=V1,V2,... (repeat); default: the model's built-in grid (GRIDS)",
    )
    parser.add_argument("--set", action="append", default=[], help="fixed KEY=VALUE (repeat)")
    parser.add_argument("--preset", help="base preset the grid is applied on top of")
    parser.add_argument("--epochs", type=int, default=2000, help="epoch cap per trial")
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--jobs", type=int, default=1, help="trials trained at once (processes)")
    parser.add_argument("--out", required=True, help="JSON record to write")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.grid:
        if args.model not in GRIDS:
            parser.error(f"no built-in grid for {args.model!r}: give --grid KEY=V1,V2,...")
        args.grid = GRIDS[args.model]
    try:
        run_study(args)
    except RearmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
