"""Time `rearm data prepare amazon` (without the text step) at the size of Amazon Baby, from raw
files written in the 2014 formats from a REARM-layout split; prints one JSON object and writes it
to $OUT/prepare_baby.json (OUT defaults to a temporary folder).

    python benchmarks/prepare_baby.py [SPLIT_DIR] [--quick]

SPLIT_DIR defaults to ../shared/data/amazon/baby. Each interaction becomes one strict-JSON review
(user U<id>, item B<id>, one day apart per user, train before valid before test), each item one
Python-literal metadata record, and each item a 4096-d record of the published binary image
feature format; so the timing covers parsing, k-core, ids, split, reading the image feature file
and writing, and the split sizes show how the per-user 8:1:1 rule compares with the given split.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from rearm.data.prepare import prepare_amazon

ROOT = Path(__file__).resolve().parents[1]


def write_raw(split_dir: Path, raw: Path, limit_users: int | None) -> dict:
    splits = [np.load(split_dir / f"{name}.npy") for name in ("train", "valid", "test")]
    users = np.concatenate([s[0] for s in splits])
    items = np.concatenate([s[1] for s in splits])
    stage = np.concatenate([np.full(s.shape[1], code) for code, s in enumerate(splits)])
    if limit_users is not None:
        keep = users < limit_users
        users, items, stage = users[keep], items[keep], stage[keep]
    order = np.lexsort((items, stage, users))
    users, items, stage = users[order], items[order], stage[order]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    times = 1_400_000_000 + rank * 86_400
    raw.mkdir(parents=True, exist_ok=True)
    with gzip.open(raw / "reviews_Baby_5.json.gz", "wt", encoding="utf-8") as handle:
        for user, item, stamp in zip(users, items, times):
            record = {
                "reviewerID": f"U{user:06d}",
                "asin": f"B{item:09d}",
                "overall": 5.0,
                "reviewText": "Works well.",
                "unixReviewTime": int(stamp),
            }
            handle.write(json.dumps(record) + "\n")
    item_ids = np.unique(items)
    with gzip.open(raw / "meta_Baby.json.gz", "wt", encoding="utf-8") as handle:
        for item in item_ids:
            record = {
                "asin": f"B{item:09d}",
                "title": f"Product {item}",
                "brand": "Brand",
                "categories": [["Baby", "Nursery"]],
                "description": "A product.",
            }
            handle.write(repr(record) + "\n")
    rng = np.random.default_rng(0)
    with open(raw / "image_features_Baby.b", "wb") as handle:
        for item in item_ids:
            handle.write(f"B{item:09d}".encode())
            handle.write(rng.random(4096, dtype=np.float32).tobytes())
    return {
        "split": {
            name: int((stage == code).sum()) for code, name in enumerate(("train", "valid", "test"))
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "split_dir", nargs="?", default=str(ROOT.parent / "shared/data/amazon/baby")
    )
    parser.add_argument("--quick", action="store_true", help="the first 500 users, 2-core")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="prepare_baby_"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prepare_baby_work_"))
    started = time.perf_counter()
    given = write_raw(Path(args.split_dir), work / "raw", 500 if args.quick else None)
    written = time.perf_counter() - started
    started = time.perf_counter()
    record = prepare_amazon(
        work / "raw" / "reviews_Baby_5.json.gz",
        work / "raw" / "meta_Baby.json.gz",
        work / "prepared",
        image_features=work / "raw" / "image_features_Baby.b",
        text=False,
        k=2 if args.quick else 5,
    )
    seconds = time.perf_counter() - started
    identical = {}
    for name in ("train", "valid", "test"):
        given_pairs = np.load(Path(args.split_dir) / f"{name}.npy")
        ours = np.load(work / "prepared" / f"{name}.npy")
        # ids map back exactly: U<6 digits> and B<9 digits> sort as the numbers they encode
        identical[name] = bool(
            not args.quick
            and np.array_equal(
                np.unique(given_pairs[0] * 10**6 + given_pairs[1]),
                np.unique(ours[0] * 10**6 + ours[1]),
            )
        )
    result = {
        "split_dir": args.split_dir,
        "quick": args.quick,
        "raw_files_seconds": round(written, 2),
        "prepare_seconds_without_text": round(seconds, 2),
        "users": record["card"]["num_users"],
        "items": record["card"]["num_items"],
        "counts": record["counts"],
        "split_prepared": {k: record["split"][k] for k in ("train", "valid", "test")},
        "split_given": given["split"],
        "pairs_identical_to_given": identical,
        "image": record["image"],
        "cpu_count": os.cpu_count(),
    }
    (out / "prepare_baby.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
