"""Tables of `rearm coldstart users|items` results (README "Cold start"), mean and standard
deviation over the seeds found.

    python benchmarks/coldstart.py OUT_DIR [OUT_DIR ...] [--reevaluate] [--json]

Each OUT_DIR is a folder written by `rearm coldstart`. With --reevaluate, the tables are
recomputed from the saved runs (no training: the same seeded draw, every fold-in variant and
every view of the current code), so what was added after a study ran is measured on the same
models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def reevaluate(folder: Path, record: dict) -> dict:
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments import coldstart
    from rearm.experiments.bundle import load_bundle
    from rearm.experiments.run import load_run_data

    config = load_bundle(folder / "run").meta["config"]
    dataset = load_run_data(config["data"])
    protocol = get_protocol(config["protocol"])
    if record["protocol"] == "cold_users":
        cold = coldstart.draw_cold_users(dataset, record["fraction"], record["seed"])
        return {**record, **coldstart.evaluate_cold_users(folder / "run", dataset, cold, protocol)}
    cold = coldstart.draw_cold_items(dataset, record["fraction"], record["seed"])
    warm_run = folder / "warm_run"
    found = coldstart.evaluate_cold_items(
        folder / "run",
        dataset,
        cold,
        protocol,
        warm_run=warm_run if (warm_run / "model").is_dir() else None,
    )
    return {**record, **found}


def count(values: list[dict]) -> str:
    low, high = min(v["num_users"] for v in values), max(v["num_users"] for v in values)
    return str(low) if low == high else f"{low}-{high}"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--reevaluate", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    users: dict = defaultdict(lambda: defaultdict(list))
    items: dict = defaultdict(lambda: defaultdict(list))
    seeds: dict = defaultdict(list)
    choices: dict = defaultdict(list)
    for folder in args.folders:
        path = folder / "results.json"
        if not path.is_file():
            print(f"skipping {folder}: no results.json", file=sys.stderr)
            continue
        record = json.loads(path.read_text())
        key = (record["protocol"], record["model"])
        seeds[key].append(record["seed"])
        if args.reevaluate:
            print(f"re-evaluating {folder}", file=sys.stderr)
            record = reevaluate(folder, record)
            with open(path.with_name("results.reevaluated.json"), "w") as handle:
                json.dump(record, handle, indent=1)
        if record["protocol"] == "cold_users":
            rows = users[record["model"]]
            rows["trained users (their own test)"].append(record["warm_users"]["trained"])
            for name, row in record["cold_users"].items():
                label = "popularity" if name == "popularity" else f"fold-in {name}"
                rows[label].append(row["test"])
            if "bundle_fold_in" in record:
                chosen = record["bundle_fold_in"]["name"]
                rows["fold-in as `Bundle.fold_in` chooses"].append(
                    record["cold_users"][chosen]["test"]
                )
                choices[record["model"]].append(chosen)
        else:
            rows = items[record["model"]]
            for name, row in record["cold_items"].items():
                rows[f"{name}, among all items"].append(row)
            if "best_cold_item_method_by_valid" in record:
                chosen = record["best_cold_item_method_by_valid"]
                rows["model as chosen on valid, among all items"].append(
                    record["cold_items"][f"model {chosen}"]
                )
                choices[record["model"]].append(chosen)
            if "add_items_choice" in record:
                auto = record["add_items_choice"]["label"]
                rows["model as `add-items --method auto` chooses, among all items"].append(
                    record["cold_items"][f"model {auto}"]
                )
                choices[record["model"]].append(f"auto: {auto}")
            for name, row in record.get("cold_items_among_themselves", {}).items():
                rows[f"{name}, among the held-out items only"].append(row)
            for name, row in record.get("evaluated_users_all_test_items", {}).items():
                rows[f"{name}: the same users, all their test items"].append(row)
    out = {"users": users, "items": items}
    if args.json:
        print(json.dumps(out, indent=1, default=dict))
        return 0
    for model, rows in users.items():
        print(
            f"\ncold users, {model}, seeds {sorted(seeds[('cold_users', model)])}, test; "
            f"Bundle.fold_in chose {choices[model]}"
        )
        print("| users, method | Recall@20 | NDCG@20 | users |")
        print("|---|---|---|---|")
        for label, values in rows.items():
            print(
                f"| {label} | {mean_std([v['Recall@20'] for v in values])} | "
                f"{mean_std([v['NDCG@20'] for v in values])} | {count(values)} |"
            )
    for model, rows in items.items():
        print(
            f"\ncold items, {model}, seeds {sorted(seeds[('cold_items', model)])}; "
            f"chosen on valid: {choices[model]}"
        )
        print("| ranking of the held-out items | Recall@20 | NDCG@20 | users |")
        print("|---|---|---|---|")
        for label, values in rows.items():
            print(
                f"| {label} | {mean_std([v['Recall@20'] for v in values])} | "
                f"{mean_std([v['NDCG@20'] for v in values])} | {count(values)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
