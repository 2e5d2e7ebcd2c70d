"""`rearm plan`: the memory and time a REARM run will need, before anything is built."""

from __future__ import annotations

import argparse
import json
import re
import sys

from rearm.commands.options import add_config_arguments, config_from_args
from rearm.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="estimate a run's graphs, memory and seconds per epoch before building anything",
        description=(
            "Estimate, from the data set's shape and the resolved configuration (same --data, "
            "--preset, --set as `rearm train`), every graph's nnz and bytes, the feature tables, "
            "parameters, gradients and AdamW state, the peak memory of graph building, model "
            "construction and training, and seconds per epoch on this machine from a short "
            "calibration. --synthetic USERS ITEMS INTERACTIONS DIMS plans a hypothetical "
            "catalog instead (DIMS: widths like 384,512 or NAME:DIM pairs)."
        ),
    )
    add_config_arguments(parser, "seed (does not change the plan)")
    parser.add_argument("--model", help="model (default: rearm; only rearm is planned)")
    parser.add_argument(
        "--synthetic",
        nargs=4,
        metavar=("USERS", "ITEMS", "INTERACTIONS", "DIMS"),
        help="plan a hypothetical catalog of this shape instead of --data",
    )
    parser.add_argument(
        "--no-time", action="store_true", help="skip the calibration (memory only, instant)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_plan)


def _count(text: str, label: str) -> int:
    """A positive integer, digits grouped by threes with "," or "_" allowed (400,000; 400_000),
    so that 12,34 is an error rather than 1,234."""
    text = str(text)
    if not re.fullmatch(r"[0-9]+|[0-9]{1,3}(,[0-9]{3})+|[0-9]{1,3}(_[0-9]{3})+", text):
        raise ConfigError(f"--synthetic {label}: expected a positive integer, got {text!r}")
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise ConfigError(f"--synthetic {label}: expected a positive integer, got {text!r}")
    return value


def _plan(args: argparse.Namespace) -> int:
    from rearm import planning

    if args.synthetic and args.data:
        raise ConfigError("rearm plan: give --data or --synthetic, not both")
    if args.model is not None and args.model not in planning.PLANNED_MODELS:
        raise ConfigError(
            f"--model {args.model}: not planned (planned: {', '.join(planning.PLANNED_MODELS)})"
        )
    if args.synthetic:
        users, items, interactions, dims = args.synthetic
        shape = planning.synthetic_shape(
            _count(users, "USERS"),
            _count(items, "ITEMS"),
            _count(interactions, "INTERACTIONS"),
            dims,
        )
        # resolve as for a data set so presets and --set behave the same
        config = config_from_args(args, model=args.model or "rearm")
    else:
        from rearm.experiments.run import load_run_data

        config = config_from_args(args, model=args.model or "rearm")
        shape = planning.data_shape(load_run_data(config.data))
    calibration = None
    if not args.no_time:
        print(
            "timing this machine for the time estimate (about 20 s; --no-time skips it)",
            file=sys.stderr,
            flush=True,
        )
        calibration = planning.calibrate()
    result = planning.plan(
        shape,
        config.hyperparameters,
        config.training,
        model=config.model,
        calibration=calibration,
    )
    available = planning.available_memory()
    refusal = result.check_memory(available, what=f"{config.model} on {result.source}")
    if args.json:
        record = result.to_dict()
        record["available_bytes"] = available
        record["fits"] = None if available is None else refusal is None
        print(json.dumps(record, indent=1))
        return 0
    print(planning.format_plan(result))
    if available is None:
        print("available memory: unknown on this system (no /proc/meminfo)")
    elif refusal is None:
        print(
            f"fits: peak {planning._gb(result.peak_bytes)} <= {planning._gb(available)} available"
        )
    else:
        print(f"does not fit: {refusal}")
    return 0
