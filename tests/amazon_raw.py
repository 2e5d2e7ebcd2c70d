"""Small raw Amazon files written exactly in the public formats, with edge cases, for the
preparation tests: 2014 (strict-JSON reviews, Python-literal metadata) and 2023 (JSON Lines with
parent_asin). Deterministic in the seed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

UNICODE_TITLE = 'Bébé sucette – 奶嘴 ✓ "quoted" it\'s'


def make_reviews(seed: int = 0, users: int = 70, items: int = 90) -> list[tuple[str, str, int]]:
    """(user, item, time) records: 3-14 items per user, popular items more often, few distinct
    times (so that ties occur), plus repeated reviews of the same item."""
    rng = np.random.default_rng(seed)
    item_ids = [f"B{index:09d}" for index in range(items)]
    popularity = 1.0 / np.arange(1, items + 1) ** 1.1
    popularity /= popularity.sum()
    records = []
    for user in range(users):
        count = int(rng.integers(3, 15))
        chosen = rng.choice(items, size=count, replace=False, p=popularity)
        for item in chosen:
            time = 1_300_000_000 + int(rng.integers(0, 12)) * 86_400
            records.append((f"A{user:05d}USER", item_ids[item], time))
    for user, item, time in records[::23]:  # repeated reviews, later and earlier
        records.append((user, item, time + 86_400))
        records.append((user, item, time - 3 * 86_400))
    order = rng.permutation(len(records))
    return [records[index] for index in order]


def meta_records(items: list[str], without_meta: str) -> list[dict]:
    """2014-style metadata for `items` except `without_meta`, with missing fields and unicode."""
    records = []
    for index, item in enumerate(items):
        if item == without_meta:
            continue
        record = {"asin": item, "imUrl": f"http://example.invalid/{item}.jpg", "price": 9.99}
        if index % 5 != 1:
            record["title"] = UNICODE_TITLE if index == 0 else f"Product {index} title"
        if index % 3 == 0:
            record["brand"] = f"Brand{index % 4}"
        record["categories"] = (
            [["Baby", "Feeding"], ["Baby", "Bottles"]] if index % 2 else [["Baby"]]
        )
        if index % 4 != 3:
            record["description"] = f"Description of product {index}.\nSecond line."
        records.append(record)
    return records


def write_2014(folder: Path, seed: int = 0, bad_line: str | None = None) -> tuple[Path, Path]:
    """reviews_Baby_5.json.gz (strict JSON) + meta_Baby.json.gz (Python literals)."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = make_reviews(seed)
    lines = [
        json.dumps(
            {
                "reviewerID": user,
                "asin": item,
                "reviewerName": "Zoë",
                "helpful": [0, 0],
                "reviewText": "Gut – très bien",
                "overall": 5.0,
                "summary": "ok",
                "unixReviewTime": time,
                "reviewTime": "01 1, 2011",
            },
            ensure_ascii=False,
        )
        for user, item, time in reviews
    ]
    if bad_line is not None:
        lines.insert(7, bad_line)
    review_path = folder / "reviews_Baby_5.json.gz"
    with gzip.open(review_path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    items = sorted({item for _, item, _ in reviews})
    meta = meta_records(items + ["B999999999"], without_meta=items[2])
    meta_path = folder / "meta_Baby.json.gz"
    with gzip.open(meta_path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(repr(record) for record in meta) + "\n")
    return review_path, meta_path


def write_2023(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Baby_Products.jsonl + meta_Baby_Products.jsonl (plain, not gzipped), parent_asin ids."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = make_reviews(seed)
    review_path = folder / "Baby_Products.jsonl"
    review_path.write_text(
        "\n".join(
            json.dumps(
                {
                    "rating": 4.0,
                    "title": "fine",
                    "text": "ok",
                    "asin": item + "V",
                    "parent_asin": item,
                    "user_id": user,
                    "timestamp": time * 1000,
                    "verified_purchase": True,
                }
            )
            for user, item, time in reviews
        )
        + "\n",
        encoding="utf-8",
    )
    items = sorted({item for _, item, _ in reviews})
    meta_path = folder / "meta_Baby_Products.jsonl"
    lines = []
    for record in meta_records(items, without_meta=items[2]):
        lines.append(
            json.dumps(
                {
                    "main_category": "Baby",
                    "title": record.get("title"),
                    "store": record.get("brand"),
                    "categories": [name for path in record["categories"] for name in path],
                    "description": [record["description"]] if "description" in record else [],
                    "features": [],
                    "details": {},
                    "parent_asin": record["asin"],
                },
                ensure_ascii=False,
            )
        )
    meta_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return review_path, meta_path


def write_image_features(path: Path, items: list[str], dim: int = 4096, seed: int = 0) -> dict:
    """The published binary layout: 10-byte ASIN + dim float32, per item; returns the vectors."""
    rng = np.random.default_rng(seed)
    vectors = {item: rng.random(dim, dtype=np.float32) for item in items}
    with open(path, "wb") as handle:
        for item, vector in vectors.items():
            handle.write(item.encode("ascii").ljust(10, b" "))
            handle.write(vector.astype("<f4").tobytes())
    return vectors
