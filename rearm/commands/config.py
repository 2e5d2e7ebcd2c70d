"""`rearm config show NAME`: every key a model accepts, with its default, domain and meaning,
generated from the same declarations that `rearm train` checks."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from rearm.models import MODEL_NAMES

    config = subparsers.add_parser(
        "config",
        help="show the configuration keys of a model",
        description="Inspect run configurations.",
    )
    actions = config.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show",
        help="keys, defaults, domains and meanings of a model's configuration",
        description="List every key `rearm train --model NAME` accepts (top-level, training and "
        "model hyperparameters) with its default, its allowed domain and its meaning.",
    )
    show.add_argument("name", choices=sorted(MODEL_NAMES), metavar="NAME", help="model name")
    show.add_argument("--preset", help="show this preset's values as the defaults")
    show.add_argument("--json", action="store_true", help="print one JSON list")
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    print_config_keys(args.name, args.preset, as_json=args.json)
    return 0


def print_config_keys(model: str, preset: str | None = None, as_json: bool = False) -> None:
    """Print the table of config_keys(model, preset) (or JSON) on stdout."""
    from rearm.experiments.config import config_keys

    rows = config_keys(model, preset)
    if as_json:
        print(json.dumps(rows))
        return
    print(f"configuration keys of model {model!r}" + (f" (preset {preset})" if preset else ""))
    print("set with --set KEY=VALUE or in a config file's section; later sources win")
    for section in ("", "training", "hyperparameters"):
        entries = [row for row in rows if row["section"] == section]
        print(f"\n{section or 'top level'}:")
        width = max(len(row["key"]) for row in entries)
        for row in entries:
            default = json.dumps(row["default"])
            print(f"  {row['key']:<{width}}  default {default}; {row['domain']}")
            if row["meaning"]:
                print(f"  {'':<{width}}  {row['meaning']}")
