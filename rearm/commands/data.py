"""`rearm data info PATH` (the dataset card) and `rearm data synth --out DIR` (the synthetic
default data set in the REARM layout)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rearm.commands import data_sources
from rearm.data.corrupt import MANIFEST, corrupt_dataset
from rearm.data.corrupt import MODES as CORRUPTION_MODES
from rearm.data.dataset import SPLITS
from rearm.data.describe import describe
from rearm.data.readers import FORMATS, load_dataset
from rearm.data.synth import (
    DEFAULT_MODALITIES,
    make_synthetic,
    parse_modality_spec,
    write_rearm_layout,
)
from rearm.errors import DataError

_DEFAULT_MODALITIES = ",".join(f"{name}:{dim}" for name, dim in DEFAULT_MODALITIES.items())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect a data set or write the synthetic one",
        description="Inspect a data set (REARM, MMRec or tabular layout) or write synthetic data.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    commands.required = True

    info = commands.add_parser(
        "info",
        help="print the dataset card",
        description="Read and validate a data set, then print its card.",
    )
    info.add_argument("path", metavar="PATH", help="data set folder or interactions file")
    info.add_argument("--json", action="store_true", help="print the card as one JSON object")
    add_reader_arguments(info)
    info.set_defaults(handler=run_info)

    synth = commands.add_parser(
        "synth",
        help="write the synthetic data set (REARM layout)",
        description="Write the planted synthetic data set as a REARM-layout folder.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    synth.add_argument("--users", type=int, default=2000, metavar="N", help="default 2000")
    synth.add_argument("--items", type=int, default=1000, metavar="M", help="default 1000")
    synth.add_argument("--seed", type=int, default=2025, metavar="S", help="default 2025")
    synth.add_argument(
        "--modalities",
        default=_DEFAULT_MODALITIES,
        metavar="SPEC",
        help=f"NAME:DIM[:noise][,...]; :noise marks a pure-noise modality (default "
        f"{_DEFAULT_MODALITIES})",
    )
    synth.add_argument(
        "--misalignment",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction of items whose first modality (or --misaligned-modality) shows another "
        "item's latent factors; listed in misalignment.json (default 0)",
    )
    synth.add_argument("--misaligned-modality", metavar="NAME", help="default the first modality")
    synth.add_argument(
        "--force", action="store_true", help="write into a non-empty folder that is not a data set"
    )
    synth.set_defaults(handler=run_synth)

    corrupt = commands.add_parser(
        "corrupt",
        help="write a copy of a data set with one modality altered for a fraction of items",
        description="Write DST (REARM layout): the interactions of SRC with modality NAME "
        "altered for round(P x items) items (half up), and corruption.json listing them. "
        "shuffle: a derangement of the chosen rows; noise: Gaussian with the per-dimension "
        "mean/std; zero: zeros; swap: another modality's rows times a fixed random projection.",
    )
    corrupt.add_argument("path", metavar="SRC", help="data set folder or interactions file")
    corrupt.add_argument("--out", required=True, metavar="DST", help="new or empty folder")
    corrupt.add_argument("--modality", required=True, metavar="NAME", help="modality to alter")
    corrupt.add_argument(
        "--fraction", required=True, type=float, metavar="P", help="fraction of items, in [0, 1]"
    )
    corrupt.add_argument("--mode", required=True, choices=CORRUPTION_MODES)
    corrupt.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    corrupt.add_argument(
        "--swap-with", metavar="NAME", help="swap: the other modality (default: the first other)"
    )
    add_reader_arguments(corrupt)
    corrupt.set_defaults(handler=run_corrupt)

    derive = commands.add_parser(
        "add-modality",
        help="write a copy of a data set with one more modality derived from another",
        description="Write SRC plus a modality derived from one of its tables (a fixed random "
        "projection to --dim, standardised, plus Gaussian noise: no information the source "
        "table does not hold) as a new REARM-layout folder with a modality.json manifest.",
    )
    derive.add_argument("path", metavar="SRC", help="data set to read (any layout)")
    derive.add_argument("--out", required=True, metavar="DIR", help="new folder (missing or empty)")
    derive.add_argument("--from", dest="source", required=True, metavar="MODALITY")
    derive.add_argument("--name", required=True, help="name of the new modality")
    derive.add_argument("--dim", type=int, required=True, metavar="D", help="its width")
    derive.add_argument(
        "--noise", type=float, default=0.5, help="std of the added noise (default 0.5)"
    )
    derive.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    derive.set_defaults(handler=run_add_modality)

    data_sources.register(commands)


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `load_dataset`, as flags (shared by every command that reads data)."""
    group = parser.add_argument_group("data set options")
    group.add_argument("--format", choices=FORMATS, default="auto", help="layout (default auto)")
    group.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="NAME=PATH[,NAME=PATH]",
        help="modality feature file(s): .npy (rows aligned to --item-list for tabular data, to "
        "item ids otherwise) or .parquet (item + vector columns); repeatable",
    )
    group.add_argument("--item-list", metavar="FILE", help="tabular: item ids, one per line")
    group.add_argument("--user-col", default="user", help="tabular user column (default user)")
    group.add_argument("--item-col", default="item", help="tabular item column (default item)")
    group.add_argument("--split-col", default="split", help="tabular split column (default split)")
    group.add_argument("--vector-col", help="Parquet feature vector column (default: the list one)")
    group.add_argument("--num-users", type=int, metavar="N", help="REARM/MMRec: declared users")
    group.add_argument("--num-items", type=int, metavar="M", help="REARM/MMRec: declared items")


def load_from_args(args: argparse.Namespace):
    """Call `load_dataset` with the flags of `add_reader_arguments`."""
    options = {}
    for key in ("item_list", "vector_col", "num_users", "num_items"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    for key in ("user_col", "item_col", "split_col"):
        options[key] = getattr(args, key)
    return load_dataset(
        args.path, format=args.format, features=parse_feature_flags(args.features), **options
    )


def parse_feature_flags(values: list[str]) -> dict[str, str]:
    """["image=img.npy,text=t.parquet", ...] -> {"image": "img.npy", "text": "t.parquet"}."""
    result: dict[str, str] = {}
    for value in values:
        for part in value.split(","):
            name, sep, path = part.partition("=")
            name, path = name.strip(), path.strip()
            if not sep or not name or not path:
                raise DataError(f"--features: bad entry {part!r}; expected NAME=PATH")
            if name in result:
                raise DataError(f"--features: modality {name!r} given twice")
            result[name] = path
    return result


def run_info(args: argparse.Namespace) -> int:
    card = describe(load_from_args(args))
    if args.json:
        print(json.dumps(card, indent=2))
    else:
        print(format_card(card))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    modalities, noise = parse_modality_spec(args.modalities)
    dataset = make_synthetic(
        num_users=args.users,
        num_items=args.items,
        modalities=modalities,
        seed=args.seed,
        misalignment=args.misalignment,
        misaligned_modality=args.misaligned_modality,
        noise_modalities=noise,
    )
    records = {}
    if "misalignment" in dataset.notes:
        records["misalignment.json"] = dataset.notes["misalignment"]
    write_rearm_layout(dataset, args.out, force=args.force, records=records)
    card = describe(dataset)
    card["format"], card["source"] = "rearm", args.out
    print(f"wrote {args.out} (REARM layout)")
    print(format_card(card))
    return 0


def run_corrupt(args: argparse.Namespace) -> int:
    dataset = load_from_args(args)
    manifest = corrupt_dataset(
        dataset,
        args.out,
        args.modality,
        args.fraction,
        args.mode,
        args.seed,
        swap_with=args.swap_with,
    )
    print(
        f"wrote {args.out} (REARM layout): modality {manifest['modality']!r}, {manifest['mode']} "
        f"on {manifest['count']:,} of {dataset.num_items:,} items (fraction "
        f"{manifest['fraction']:g}, seed {manifest['seed']}); items in {Path(args.out) / MANIFEST}"
    )
    # the REARM layout sizes users and items by the largest ids in the splits
    items = max(int(dataset.split(name).indices.max(initial=-1)) for name in SPLITS) + 1
    users = (
        max(int(dataset.split(name).getnnz(axis=1).nonzero()[0].max(initial=-1)) for name in SPLITS)
        + 1
    )
    flags = [
        f"--{which} {size}"
        for which, size, seen in (
            ("num-users", dataset.num_users, users),
            ("num-items", dataset.num_items, items),
        )
        if seen < size
    ]
    if flags:
        print(
            f"note: trailing users / items have no interactions; read {args.out} with {' '.join(flags)}"
        )
    return 0


def run_add_modality(args: argparse.Namespace) -> int:
    from rearm.data.derive import MANIFEST, add_modality

    print(f"reading {args.path}", file=sys.stderr)
    manifest = add_modality(
        args.path,
        args.out,
        source=args.source,
        name=args.name,
        dim=args.dim,
        noise=args.noise,
        seed=args.seed,
    )
    print(
        f"wrote {args.out} (REARM layout): {manifest['modality']} [{args.dim}] from "
        f"{manifest['derived_from']}, noise {args.noise:g}, seed {args.seed}; "
        f"manifest {MANIFEST}"
    )
    return 0


def format_card(card: dict) -> str:
    """The human-readable dataset card (thousands separators, sparsity as a percentage)."""
    counts = card["interactions"]
    lines = [
        f"data set      {card['source']} ({card['format']} layout)",
        f"users         {card['num_users']:,}",
        f"items         {card['num_items']:,}",
        "interactions  "
        + " | ".join(f"{name} {counts[name]:,}" for name in ("train", "valid", "test"))
        + f" | total {counts['total']:,}",
        f"sparsity      {100 * card['sparsity']:.2f}%",
        "train/user    min {min}, mean {mean:.1f}, max {max}".format(**card["train_per_user"]),
    ]
    if card["modalities"]:
        lines.append("modalities")
        width = max(len(name) for name in card["modalities"])
        for name, stats in card["modalities"].items():
            lines.append(
                f"  {name:<{width}}  dim {stats['dim']}, non-negative "
                f"{100 * stats['nonneg_fraction']:.1f}%, zeros {100 * stats['zero_fraction']:.1f}%, "
                f"mean row norm {stats['mean_row_norm']:.4g}, zero rows {stats['zero_rows']:,}"
            )
    else:
        lines.append("modalities    none")
    lines.append("notes")
    lines.extend(f"  {line}" for line in note_lines(card["notes"]))
    return "\n".join(lines)


def note_lines(notes: dict) -> list[str]:
    """Validation findings in words; repeated pairs follow the rule of Dataset.from_pairs."""
    lines = []
    duplicates = notes.get("duplicates_within_split", {})
    if any(duplicates.values()):
        detail = ", ".join(f"{split} {count:,}" for split, count in duplicates.items() if count)
        lines.append(f"duplicate pairs within a split kept once: {detail}")
    repeated = notes.get("repeated_across_splits", {})
    if any(repeated.values()):
        detail = ", ".join(f"{split} {count:,}" for split, count in repeated.items() if count)
        lines.append(f"pairs already in an earlier split, dropped from: {detail}")
    if not lines:
        lines.append("no duplicate or cross-split pairs")
    for key, text in (
        ("users_without_train", "users only in valid/test"),
        ("items_without_train", "items only in valid/test"),
        ("users_without_interactions", "users without any interaction"),
        ("items_without_interactions", "items without any interaction"),
    ):
        if notes.get(key):
            lines.append(f"{text}: {notes[key]:,}")
    return lines
