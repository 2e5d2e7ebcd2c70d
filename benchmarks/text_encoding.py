"""Time the text step of `rearm data prepare amazon`: encode one sentence per item with the
offline all-MiniLM-L6-v2 (or --model FOLDER); prints one JSON object and writes it to
$OUT/text_encoding.json (OUT defaults to a temporary folder).

    python benchmarks/text_encoding.py [--items 7050] [--batch-size 64] [--quick]

The raw Amazon metadata is not shipped here, so the sentences are made by the preparation's own
template from generated fields of typical Amazon lengths (title 6-16 words, a brand, 3-5
category names, and for 80% of the items a description of 20-160 words). Needs
`pip install 'rearm[text]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from rearm.data.prepare.text import encode_texts, item_sentence, resolve_text_model

WORDS = (
    "baby soft cotton bottle feeding nursery stroller seat car safety blanket organic toddler "
    "infant bib pacifier teether crib sheet waterproof diaper changing pad portable travel "
    "lightweight foldable adjustable washable durable gentle natural bpa free silicone handle "
    "easy clean storage bag set pack pink blue grey white newborn months years mom gift"
).split()
CATEGORIES = [
    "Baby",
    "Feeding",
    "Bottles",
    "Nursery",
    "Bedding",
    "Gear",
    "Strollers",
    "Diapering",
    "Safety",
    "Toys",
    "Bathing",
    "Health",
]


def sentences(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high + 1))))

    result = []
    for _ in range(count):
        fields = {
            "title": words(6, 16).capitalize(),
            "brand": str(rng.choice(WORDS)).capitalize() + "Co",
            "categories": list(rng.choice(CATEGORIES, size=int(rng.integers(3, 6)), replace=False)),
        }
        if rng.random() < 0.8:
            fields["description"] = words(20, 160).capitalize() + "."
        result.append(item_sentence(fields))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=7050, help="default 7050 (Amazon Baby)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", help="sentence-transformers folder (default: packaged MiniLM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="200 items (a smoke test)")
    args = parser.parse_args()
    count = 200 if args.quick else args.items
    texts = sentences(count, args.seed)
    folder, name = resolve_text_model(args.model)
    started = time.perf_counter()
    table, info = encode_texts(
        texts, folder, batch_size=args.batch_size, progress=lambda line: print(line, flush=True)
    )
    wall = time.perf_counter() - started
    result = {
        "items": count,
        "model": name,
        "dim": int(table.shape[1]),
        "wall_seconds_including_model_load": round(wall, 2),
        "model_load_seconds": info["load_seconds"],
        "encode_seconds": info["seconds"],
        "items_per_second": round(count / info["seconds"], 1),
        "mean_sentence_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
        "batch_size": args.batch_size,
        "torch_threads": info["threads"],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "versions": {
            "sentence_transformers": info["sentence_transformers"],
            "torch": info["torch"],
        },
    }
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="text_encoding_"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "text_encoding.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
