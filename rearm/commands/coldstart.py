"""`rearm add-items` (new items in a saved run without retraining) and `rearm coldstart
users|items` (the cold-start protocols)."""

from __future__ import annotations

import argparse
import json

from rearm.commands.options import add_config_arguments, config_from_args
from rearm.errors import RunError


def register(subparsers: argparse._SubParsersAction) -> None:
    from rearm.models import MODEL_NAMES

    add = subparsers.add_parser(
        "add-items",
        help="write a copy of a run whose model also recommends new items (no retraining)",
        description=(
            "Represent new items that have features but no interactions (by their most "
            "feature-similar trained items, or through the model's feature path) and write "
            "NEW_RUN, a complete run whose item table includes them. DIR holds item_ids.txt "
            "(one id per line) and one <modality>_feat.npy [n, D_m] per modality of the run. "
            "The run's training data must be readable (the path in its config, or --data)."
        ),
    )
    add.add_argument("run_dir")
    add.add_argument("--features", required=True, help="folder of the new items' features")
    add.add_argument("--out", required=True, help="the new run directory to write")
    add.add_argument("--data", help="the run's training data, if it has moved")
    add.add_argument(
        "--method",
        choices=["auto", "neighbours", "features"],
        default="auto",
        help="neighbours: the trained rows of the most feature-similar items, on their scale; "
        "features: the model's own feature path (rearm, freedom, vbpr), which scores new "
        "items below trained ones; auto (default): the better of the two (neighbours at "
        "k = 3, 10, 30) on the run's own items made cold",
    )
    add.add_argument(
        "--neighbours",
        type=int,
        help="feature-similar known items --method neighbours uses (default 10; auto "
        "chooses its own)",
    )
    add.add_argument("--force", action="store_true", help="replace a run in --out")
    add.add_argument("--quiet", action="store_true", help="no progress output")
    add.set_defaults(handler=_add_items)

    cold = subparsers.add_parser(
        "coldstart",
        help="cold-start protocols: new users folded in, new items from features",
        description=(
            "users: hold out --fraction of the users, train on the rest, fold the held-out "
            "users in from their train items and compare their test metrics with the trained "
            "users' and popularity. items: hide --fraction of the items (with test "
            "interactions) from training, represent them from their features, and compare "
            "Recall@20 on their test interactions with a content-only kNN baseline and the "
            "same items trained warm. Writes OUT/results.json and the trained runs under OUT."
        ),
    )
    cold.add_argument("which", choices=["users", "items"])
    cold.add_argument("--model", choices=sorted(MODEL_NAMES), help="model (default: rearm)")
    add_config_arguments(cold, "seed of the held-out draw and of training (default 2025)")
    cold.add_argument("--fraction", type=float, default=0.1, help="share held out (default 0.1)")
    cold.add_argument("--epochs", type=int, help="most epochs to train (training.epochs)")
    cold.add_argument("--patience", type=int, help="early-stopping patience")
    cold.add_argument("--device", help="auto, cpu or cuda[:N] (default auto)")
    cold.add_argument(
        "--warm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="items: also train with the held-out items for a warm reference (default on)",
    )
    cold.add_argument("--out", required=True, help="folder for results.json and the runs")
    cold.add_argument("--force", action="store_true", help="replace results and runs in --out")
    cold.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate the complete runs already in --out instead of training them again",
    )
    cold.add_argument("--quiet", action="store_true", help="no progress output")
    cold.set_defaults(handler=_coldstart)


def _add_items(args: argparse.Namespace) -> int:
    from rearm.experiments.coldstart import add_items
    from rearm.training.trainer import Progress

    progress = Progress(enabled=not args.quiet)
    record = add_items(
        args.run_dir,
        args.features,
        args.out,
        data=args.data,
        method=args.method,
        neighbours=args.neighbours,
        force=args.force,
        progress=progress.line,
    )
    print(
        json.dumps(
            {
                "out": args.out,
                "added": record["count"],
                "first_ids": record["first_ids"],
                "method": record["method"],
            }
        )
    )
    return 0


def _coldstart(args: argparse.Namespace) -> int:
    from rearm.experiments.coldstart import cold_items_protocol, cold_users_protocol
    from rearm.training.trainer import Progress

    if not 0 < args.fraction < 1:
        raise RunError(f"--fraction must be in (0, 1), got {args.fraction}")
    config = config_from_args(
        args,
        model=args.model,
        device=args.device,
        epochs=args.epochs,
        patience=args.patience,
    )
    progress = Progress(enabled=not args.quiet)
    if args.which == "users":
        record = cold_users_protocol(
            config,
            args.out,
            fraction=args.fraction,
            force=args.force,
            reuse=args.reuse,
            progress=progress,
        )
        best = record["best_fold_in_by_valid"]
        summary = {
            "cold_users_test": record["cold_users"][best]["test"],
            "fold_in": best,
            "popularity_test": record["cold_users"]["popularity"]["test"],
            "trained_users_test": record["warm_users"]["trained"],
        }
    else:
        record = cold_items_protocol(
            config,
            args.out,
            fraction=args.fraction,
            warm=args.warm,
            force=args.force,
            reuse=args.reuse,
            progress=progress,
        )
        summary = {
            **record["cold_items"],
            "best_by_valid": record["best_cold_item_method_by_valid"],
        }
    print(json.dumps({"protocol": record["protocol"], "model": record["model"], **summary}))
    return 0
