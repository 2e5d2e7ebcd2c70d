"""`rearm analyze heatmap` and `rearm analyze contributions`: analyses of saved runs."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser(
        "analyze",
        help="analyse saved runs (probability heatmap, score contributions)",
        description="Analyses computed from saved runs (RUN_DIR/model); nothing is trained.",
    )
    commands = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS")
    commands.required = True

    heatmap = commands.add_parser(
        "heatmap",
        help="sigmoid(score) of sampled users on held-out vs non-interacted items",
        description=(
            "For sampled users with a held-out item: sigmoid(score) on their held-out items and "
            "on as many sampled items outside all their splits, per run (side by side with "
            "--against, same users and items), with the mean probability on each kind of pair "
            "and the AUC separating them. The PNG needs matplotlib (pip install 'rearm[plot]')."
        ),
    )
    heatmap.add_argument("run_dir", metavar="RUN")
    heatmap.add_argument("--against", metavar="RUN2", help="a second run on the same data")
    heatmap.add_argument("--users", type=int, default=20, help="users to sample (default 20)")
    heatmap.add_argument("--seed", type=int, default=2025, help="sampling seed (default 2025)")
    heatmap.add_argument("--split", choices=["test", "valid"], default="test")
    heatmap.add_argument("--out", metavar="FILE.png", help="write the heatmap picture here")
    heatmap.add_argument("--json", action="store_true", help="print one JSON object")
    heatmap.set_defaults(handler=_heatmap)

    contributions = commands.add_parser(
        "contributions",
        help="each score block's share of the score and its ranking quality alone",
        description=(
            "Split the score into its blocks (REARM: one per modality plus the meta block) on "
            "the held-out pairs of --split: each block's mean share of |score| terms, mean term, "
            "fraction of the mean score, and Recall@20 / NDCG@20 of the block alone (other "
            "blocks zeroed) under the run's protocol."
        ),
    )
    contributions.add_argument("run_dir", metavar="RUN")
    contributions.add_argument("--split", choices=["test", "valid"], default="test")
    contributions.add_argument("--json", action="store_true", help="print one JSON object")
    contributions.add_argument("--quiet", action="store_true", help="no progress output")
    contributions.set_defaults(handler=_contributions)


def _heatmap(args: argparse.Namespace) -> int:
    from rearm.analysis.heatmap import (
        check_same_data,
        heatmap_summary,
        probability_matrix,
        sample_heatmap,
    )
    from rearm.analysis.plot import check_png_path, plot_heatmap, require_matplotlib
    from rearm.experiments.bundle import load_bundle

    if args.out is not None:  # fail before any work
        check_png_path(args.out)
        require_matplotlib()
    runs = [args.run_dir] + ([args.against] if args.against else [])
    bundles = [load_bundle(run) for run in runs]
    if len(bundles) == 2:
        check_same_data(bundles[0], bundles[1], names=(f"RUN {runs[0]}", f"RUN2 {runs[1]}"))
    first = bundles[0]
    sample = sample_heatmap(first, users=args.users, seed=args.seed, split=args.split)
    summaries = [heatmap_summary(bundle, sample) for bundle in bundles]
    user_labels = _labels(first.user_ids, sample.users)
    if args.out is not None:
        plot_heatmap(
            args.out,
            sample,
            [
                (f"{bundle.meta['model']}: {run}", probability_matrix(bundle, sample), summary)
                for run, bundle, summary in zip(runs, bundles, summaries)
            ],
            user_labels=user_labels,
        )
    if args.json:
        record = {
            "split": sample.split,
            "seed": sample.seed,
            "users": user_labels,
            "items": _labels(first.item_ids, sample.items),
            "heldout_columns": sample.heldout_columns,
            "runs": [
                {"run": run, "model": bundle.meta["model"], **summary}
                for run, bundle, summary in zip(runs, bundles, summaries)
            ],
            "png": args.out,
        }
        print(json.dumps(record))
        return 0
    columns = len(sample.items)
    print(
        f"{len(sample.users)} {sample.split} users x {columns} items "
        f"({sample.heldout_columns} held-out, {columns - sample.heldout_columns} sampled "
        f"non-interacted), seed {sample.seed}"
    )
    print(f"  {'run':<30} {'model':<9} {'held-out p':>10} {'non-inter. p':>12} {'AUC':>7}  pairs")
    for run, bundle, summary in zip(runs, bundles, summaries):
        negative, auc = summary["mean_noninteracted_probability"], summary["auc"]
        print(
            f"  {run:<30} {bundle.meta['model']:<9} "
            f"{summary['mean_heldout_probability']:>10.4f} "
            f"{'-' if negative is None else f'{negative:.4f}':>12} "
            f"{'-' if auc is None else f'{auc:.4f}':>7}  "
            f"{summary['heldout_pairs']} / {summary['noninteracted_pairs']}"
        )
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def _contributions(args: argparse.Namespace) -> int:
    from rearm.analysis.contributions import contributions, score_blocks
    from rearm.experiments.bundle import load_bundle
    from rearm.training.trainer import Progress

    bundle = load_bundle(args.run_dir)
    score_blocks(bundle)  # a model without blocks says so before anything is computed
    progress = Progress(enabled=not args.quiet)
    report = contributions(bundle, args.split, progress=progress.line)
    if args.json:
        print(json.dumps({"run": args.run_dir, **report}))
        return 0
    metrics = list(report["all_blocks"])
    print(
        f"{report['model']} on {report['split']} ({report['protocol']} protocol): "
        f"{report['pairs']:,} held-out pairs, mean score {report['mean_score']:.4f}"
    )
    header = "".join(f"{name + ' alone':>17}" for name in metrics)
    print(f"  {'block':<14} {'width':>5} {'share':>7} {'mean term':>10} {'fraction':>9}{header}")
    for block in report["blocks"]:
        share, fraction = block["share"], block["fraction_of_score"]
        values = "".join(f"{block['alone'][name]:>17.4f}" for name in metrics)
        print(
            f"  {block['name']:<14} {block['width']:>5} "
            f"{'-' if share is None else f'{share:.3f}':>7} {block['mean_term']:>10.4f} "
            f"{'-' if fraction is None else f'{fraction:.3f}':>9}{values}"
        )
    width = sum(block["width"] for block in report["blocks"])
    values = "".join(f"{report['all_blocks'][name]:>17.4f}" for name in metrics)
    print(
        f"  {'all blocks':<14} {width:>5} {1:>7.3f} {report['mean_score']:>10.4f} {1:>9.3f}{values}"
    )
    print("  share: mean over pairs of |term| / sum of |terms|; fraction: mean term / mean score")
    return 0


def _labels(ids: list | None, indices) -> list[str]:
    """External ids of `indices` (the indices themselves when the data has none), as strings."""
    return [str(ids[i]) if ids is not None else str(int(i)) for i in indices]
