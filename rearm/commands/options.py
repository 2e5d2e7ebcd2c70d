"""Flags shared by the commands that resolve a run configuration (`train`, `graphs`)."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """--data, --preset, --config, --set KEY=VALUE (repeatable) and --seed."""
    parser.add_argument(
        "--data",
        help="data set path (REARM, MMRec or tabular layout), or a synthetic recipe "
        "synthetic:modalities=image:256,text:64[;users=N;items=M;seed=S]",
    )
    parser.add_argument("--preset", help="published settings by data set, e.g. baby, sports")
    parser.add_argument("--config", dest="config_file", help="YAML run configuration")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key (training key, model hyperparameter, or section.key)",
    )
    parser.add_argument("--seed", type=int, help=seed_help)


def config_from_args(args: argparse.Namespace, **flags):
    """resolve_config from the flags of add_config_arguments plus explicit `flags`."""
    from rearm.experiments.config import resolve_config

    return resolve_config(
        config_file=args.config_file,
        overrides=args.overrides,
        data=args.data,
        preset=args.preset,
        seed=args.seed,
        **flags,
    )
