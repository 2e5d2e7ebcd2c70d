"""Sort-based set operations (rearm.arrays) against numpy's, and what they change in loading.

    python benchmarks/unique.py [--size 2000000] [--data DIR ...] [--repeats 3] [--out FILE]

numpy 2.3 and later run a plain np.unique of integers or strings through a hash set. This times,
best of --repeats with the two ways alternating: np.unique and rearm.arrays.sorted_unique on
--size random int64 keys and on --size short string ids, np.union1d and sorted_union on two
halves of the keys, and the loading of each --data folder (rearm.data.load_dataset) with the
data layer's set operations as they are and swapped back to numpy's. Without --data it writes a
synthetic set of 200,000 users x 100,000 items (1.4 million train interactions) to a temporary
folder first. Prints one JSON object; --out also writes it to FILE (through a temporary file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(functions: dict, repeats: int) -> dict:
    """Best wall seconds of each function, the functions alternating within each repeat."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def _pair(functions: dict, repeats: int) -> dict:
    best = _best(functions, repeats)
    numpy_s, rearm_s = best.values()
    return {
        "numpy_s": round(numpy_s, 5),
        "rearm_s": round(rearm_s, 5),
        "speedup": round(numpy_s / max(rearm_s, 1e-9), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_000_000)
    parser.add_argument("--data", action="append", default=[])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.size < 2 or args.repeats < 1:
        parser.error("--size must be >= 2 and --repeats >= 1")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist")
    for folder in args.data:
        if not Path(folder).is_dir():
            parser.error(f"--data {folder}: no such folder")

    import rearm.data.dataset as dataset_module
    from rearm.arrays import sorted_union, sorted_unique
    from rearm.data import load_dataset

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 400_000 * 230_000, args.size)
    ids = np.array([f"u{value}" for value in rng.integers(0, args.size // 2, args.size)])
    half = args.size // 2
    report = {
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "size": args.size,
        "repeats": args.repeats,
        "unique_int64": _pair(
            {"numpy": lambda: np.unique(keys), "rearm": lambda: sorted_unique(keys)},
            args.repeats,
        ),
        "unique_str": _pair(
            {"numpy": lambda: np.unique(ids), "rearm": lambda: sorted_unique(ids)}, args.repeats
        ),
        "union_int64": _pair(
            {
                "numpy": lambda: np.union1d(keys[:half], keys[half:]),
                "rearm": lambda: sorted_union(keys[:half], keys[half:]),
            },
            args.repeats,
        ),
        "load": {},
    }

    folders = list(args.data)
    if not folders:
        from rearm.data.synth import make_synthetic, write_rearm_layout

        folder = Path(tempfile.mkdtemp(prefix="rearm-unique-")) / "synthetic"
        print("writing a synthetic set of 200,000 x 100,000", file=sys.stderr, flush=True)
        write_rearm_layout(make_synthetic(200_000, 100_000, {"image": 8}, seed=0), folder)
        folders = [str(folder)]

    def load_with(folder, unique, union):
        def load():
            dataset_module.sorted_unique, dataset_module.sorted_union = unique, union
            try:
                return load_dataset(folder)
            finally:
                dataset_module.sorted_unique = sorted_unique
                dataset_module.sorted_union = sorted_union

        return load

    for folder in folders:
        print(f"loading {folder}", file=sys.stderr, flush=True)
        first = load_dataset(folder)
        report["load"][folder] = {
            "interactions": int(sum(first.split(name).nnz for name in ("train", "valid", "test"))),
            **_pair(
                {
                    "numpy": load_with(folder, np.unique, np.union1d),
                    "rearm": load_with(folder, sorted_unique, sorted_union),
                },
                args.repeats,
            ),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        temporary = Path(args.out).with_name(Path(args.out).name + ".tmp")
        temporary.write_text(text + "\n")
        temporary.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
