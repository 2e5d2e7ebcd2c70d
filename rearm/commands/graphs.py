"""`rearm graphs --out DIR`: build REARM's graphs for a data set and write them as .npz files."""

from __future__ import annotations

import argparse
import json

from rearm.commands.options import add_config_arguments, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "graphs",
        help="build REARM's graphs and write them as .npz files",
        description=(
            "Build the bipartite graph and REARM's four homographs exactly as `rearm train` "
            "would (same preset, --set keys and seed; through the graph cache unless --no-cache) "
            "and write them into DIR as scipy .npz files with a graphs.json manifest. Without "
            "--data, uses the embedded synthetic data set."
        ),
    )
    add_config_arguments(parser, "co-occurrence padding seed (default 2025)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--force", action="store_true", help="replace graphs already in --out")
    parser.add_argument("--no-cache", action="store_true", help="build without the graph cache")
    parser.add_argument(
        "--compress",
        action="store_true",
        help="zip-compress the .npz files (about 40%% smaller, written about 50x slower)",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(handler=_graphs)


def _graphs(args: argparse.Namespace) -> int:
    from rearm.experiments.graphs import export_graphs
    from rearm.training.trainer import Progress

    config = config_from_args(args, model="rearm")
    manifest = export_graphs(
        config,
        args.out,
        force=args.force,
        use_cache=not args.no_cache,
        compressed=args.compress,
        progress=Progress(enabled=not args.quiet),
    )
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    data = manifest["data"]
    print(
        f"wrote {args.out}: graphs of {data['source']} ({data['users']:,} users, "
        f"{data['items']:,} items) in {manifest['total_s']:.1f}s"
    )
    for entry in manifest["graphs"].values():
        shape = " x ".join(f"{n:,}" for n in entry["shape"])
        print(
            f"  {entry['file']:<24} {shape:>20}  nnz {entry['nnz']:>12,}  {entry['seconds']:.1f}s"
        )
    return 0
