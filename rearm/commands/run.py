"""`rearm train`, `rearm evaluate` and `rearm recommend`."""

from __future__ import annotations

import argparse
import json

from rearm.commands.options import add_config_arguments, config_from_args
from rearm.errors import RunError


def register(subparsers: argparse._SubParsersAction) -> None:
    from rearm.models import MODEL_NAMES

    train = subparsers.add_parser(
        "train",
        help="train a model and write a run directory",
        description=(
            "Train a model and write RUN_DIR (config.yaml, protocol.json, metrics.jsonl, "
            "results.json, model/). Without --data, trains on the embedded synthetic data set. "
            f"Models: {', '.join(sorted(MODEL_NAMES))}."
        ),
    )
    train.add_argument("--model", choices=sorted(MODEL_NAMES), help="model (default: rearm)")
    add_config_arguments(train, "seed for python, numpy and torch (default 2025)")
    train.add_argument("--epochs", type=int, help="most epochs to train (training.epochs)")
    train.add_argument(
        "--patience", type=int, help="early stop after this many epochs without valid gain"
    )
    train.add_argument(
        "--protocol",
        choices=["standard", "reference"],
        help="negative sampling and masking rules (default standard; see protocol.json)",
    )
    train.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    train.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch, numba and BLAS (default: all cores); for several runs "
        "side by side",
    )
    train.add_argument("--out", help="run directory to write (required)")
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the interrupted or killed run in RUN_DIR from its resume.pt, exactly "
        "where it was (its own configuration and data; only --device, --threads and --quiet "
        "may be given with it)",
    )
    train.add_argument(
        "--help-config",
        action="store_true",
        help="list the keys of --model (defaults, domains, meanings) and exit",
    )
    train.add_argument(
        "--no-memory-check",
        action="store_true",
        help="train even when the planned peak memory exceeds what is available "
        "(training.memory_check=false)",
    )
    train.add_argument("--force", action="store_true", help="replace an existing run in --out")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="recompute metrics from a saved run",
        description="Recompute metrics "
        "from RUN_DIR/model under the run's protocol (no training data files needed).",
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--split", choices=["valid", "test"], default="test")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_evaluate)

    recommend = subparsers.add_parser(
        "recommend",
        help="top-k items for users from a saved run",
        description="Top-k items per user in the data's own ids, seen train items excluded. "
        "With --items instead of --users: top-k items for one new user, folded in from the "
        "items they interacted with (those items excluded; no retraining).",
    )
    recommend.add_argument("run_dir")
    who = recommend.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated user ids")
    who.add_argument("--items", help="comma-separated item ids of a user the model has never seen")
    recommend.add_argument("-k", type=int, default=20)
    recommend.add_argument(
        "--exclude", default="", help="comma-separated item ids never to recommend (besides seen)"
    )
    recommend.add_argument("--json", action="store_true", help="print one JSON object")
    recommend.set_defaults(handler=_recommend)


def _train(args: argparse.Namespace) -> int:
    from rearm.experiments.run import train_run
    from rearm.training.threads import set_threads
    from rearm.training.trainer import Progress

    if args.help_config:
        from rearm.commands.config import print_config_keys

        print_config_keys(args.model or "rearm", args.preset)
        return 0
    if args.resume is not None:
        return _resume(args)
    if not args.out:
        raise RunError("--out: required (the run directory to write)")
    if args.threads is not None:
        set_threads(args.threads)
    if args.no_memory_check:
        args.overrides = [*args.overrides, "memory_check=false"]
    config = config_from_args(
        args,
        model=args.model,
        protocol=args.protocol,
        device=args.device,
        epochs=args.epochs,
        patience=args.patience,
    )
    results = train_run(
        config, args.out, force=args.force, progress=Progress(enabled=not args.quiet)
    )
    return _report(results)


def _report(results: dict) -> int:
    """Print the run's summary line; the exit code is 0 for a complete run, 128 + the signal's
    number for one a signal stopped (its best epoch so far was saved), so that `&&` and
    schedulers do not take a partly trained run for a finished one."""
    from rearm.errors import stop_exit_code
    from rearm.training.guards import last_signal

    keys = ("model", "status", "best_epoch", "epochs_run", "test")
    print(json.dumps({k: results[k] for k in keys}))
    return stop_exit_code(last_signal()) if results["interrupted"] else 0


# flags of `rearm train` that a resumed run takes from its own config.yaml instead
_FIXED_BY_THE_RUN = {
    "model": "--model",
    "data": "--data",
    "preset": "--preset",
    "config_file": "--config",
    "overrides": "--set",
    "seed": "--seed",
    "epochs": "--epochs",
    "patience": "--patience",
    "protocol": "--protocol",
    "out": "--out",
    "force": "--force",
    "no_memory_check": "--no-memory-check",
}


def _resume(args: argparse.Namespace) -> int:
    from rearm.experiments.run import resume_run
    from rearm.training.threads import set_threads
    from rearm.training.trainer import Progress

    values = {flag: getattr(args, name) for name, flag in _FIXED_BY_THE_RUN.items()}
    # unset: None, False (a switch) or [] (--set); `is`, so that --seed 0 counts as given
    given = [
        flag
        for flag, value in values.items()
        if value is not None and value is not False and value != []
    ]
    if given:
        raise RunError(
            f"--resume: {', '.join(given)} cannot be changed when resuming (the run continues "
            "with its own config.yaml); only --device, --threads and --quiet can be given"
        )
    if args.threads is not None:
        set_threads(args.threads)
    results = resume_run(args.resume, device=args.device, progress=Progress(enabled=not args.quiet))
    return _report(results)


def _evaluate(args: argparse.Namespace) -> int:
    from rearm.experiments.bundle import load_bundle

    _check_state(args.run_dir)
    bundle = load_bundle(args.run_dir)
    metrics = bundle.evaluate(args.split)
    if args.json:
        print(json.dumps({"split": args.split, "model": bundle.meta["model"], **metrics}))
    else:
        print(f"{bundle.meta['model']} on {args.split} ({bundle.meta['protocol']} protocol)")
        for name, value in metrics.items():
            if isinstance(value, float):
                print(f"  {name:<14} {value:.4f}")
            elif isinstance(value, int):
                print(f"  {name:<14} {value}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from rearm.experiments.bundle import load_bundle

    if args.items is not None:
        return _recommend_from_items(args)
    users = [u.strip() for u in args.users.split(",") if u.strip()]
    if not users:
        raise RunError("--users: give at least one user id")
    _check_state(args.run_dir)
    bundle = load_bundle(args.run_dir)
    exclude = [i.strip() for i in args.exclude.split(",") if i.strip()]
    recommendations = bundle.recommend(users, args.k, exclude=exclude)
    if args.json:
        print(json.dumps({"k": args.k, "recommendations": recommendations}))
    else:
        for entry in recommendations:
            print(f"user {entry['user']}:")
            for rank, (item, score) in enumerate(zip(entry["items"], entry["scores"]), 1):
                print(f"  {rank:>3}. {item}  ({score:.4f})")
    return 0


def _recommend_from_items(args: argparse.Namespace) -> int:
    from rearm.experiments.bundle import load_bundle

    items = [i.strip() for i in args.items.split(",") if i.strip()]
    if not items:
        raise RunError("--items: give at least one item id")
    if args.k < 1:
        raise RunError(f"-k must be >= 1, got {args.k}")
    _check_state(args.run_dir)
    bundle = load_bundle(args.run_dir)
    exclude = [i.strip() for i in args.exclude.split(",") if i.strip()]
    entry = bundle.recommend_from_items(items, args.k, exclude=exclude)
    if args.json:
        print(json.dumps({"k": args.k, "from_items": items, **entry}))
    else:
        print(f"new user from {len(items)} item(s): {', '.join(items)}")
        for rank, (item, score) in enumerate(zip(entry["items"], entry["scores"]), 1):
            print(f"  {rank:>3}. {item}  ({score:.4f})")
    return 0


def _check_state(run_dir: str) -> None:
    """RunError for a run without a usable model; a note on stderr for a model saved by an
    interrupted or diverged run."""
    import sys

    from rearm.experiments.status import describe, require_model

    record = require_model(run_dir)
    if record is not None and record["status"] != "complete":
        print(
            f"rearm: note: {run_dir}: run is {describe(record)}; using its best epoch "
            f"({record.get('best_epoch', '?')})",
            file=sys.stderr,
        )
