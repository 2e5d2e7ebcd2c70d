"""Build every graph REARM needs for one data set, from scratch (no cache), and print one JSON
object with the time and peak memory of each step.

usage:
  python benchmarks/graphs.py DATA_PATH [--preset baby|sports|clothing] [--user-knn-k K]
      [--item-knn-k K] [--save DIR] [--knn exact|faiss]
  python benchmarks/graphs.py --synthetic --users 2000000 --items 1000000 \
      --interactions 20000000 --dims text:384 [--knn faiss]

With --save DIR each graph is written with scipy.sparse.save_npz (CSR, rows = the node the row
belongs to): bipartite.npz (users first), item_cooccurrence.npz, user_cooccurrence.npz,
item_semantic.npz, user_interest.npz, item_homograph.npz, user_homograph.npz.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from rearm.data.dataset import Dataset
from rearm.graphs import (
    GRAPH_FILES,
    build_graphs,
    neighbour_recall,
    save_graphs,
    to_scipy,
)
from rearm.graphs.build import graph_seconds
from rearm.graphs.similarity import exact_neighbours_of_rows as sample_recall_lists
from rearm.models import get_model
from rearm.models.presets import get_preset

# Section 10 of REARM_SPEC.md: the published presets (rearm.models.presets) give the graph
# parameters; REARM.graph_arguments turns them into build_graphs keywords, as in training.
PRESET_NAMES = ("baby", "sports", "clothing")
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)
_THREADS_SET = "REARM_BENCHMARK_THREADS"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load(path: str) -> Dataset:
    try:
        from rearm.data import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        return load_dataset(path)
    folder = Path(path)
    pairs = {name: np.load(folder / f"{name}.npy") for name in ("train", "valid", "test")}
    features = {
        file.name[: -len("_feat.npy")]: np.load(file) for file in sorted(folder.glob("*_feat.npy"))
    }
    return Dataset.from_pairs(pairs, features, source=str(folder))


def synthetic(
    users: int,
    items: int,
    interactions: int,
    dims: dict[str, int],
    seed: int,
    item_alpha: float = 0.5,
    user_alpha: float = 0.5,
):
    """Power-law interactions (Zipf-like item popularity and user activity) and low-rank plus
    noise item features, generated vectorised. Returns (train CSR, features)."""
    rng = np.random.default_rng(seed)
    # Item popularity ~ rank^-item_alpha and user activity ~ rank^-user_alpha, shuffled over ids.
    item_p = np.arange(1, items + 1, dtype=np.float64) ** -item_alpha
    item_p = rng.permutation(item_p / item_p.sum())
    user_p = np.arange(1, users + 1, dtype=np.float64) ** -user_alpha
    user_p = rng.permutation(user_p / user_p.sum())
    item_cdf = np.cumsum(item_p)
    user_cdf = np.cumsum(user_p)
    chunk = 1 << 22
    keys = []
    for start in range(0, interactions, chunk):
        size = min(chunk, interactions - start)
        u = np.minimum(np.searchsorted(user_cdf, rng.random(size)), users - 1)
        i = np.minimum(np.searchsorted(item_cdf, rng.random(size)), items - 1)
        keys.append(u.astype(np.int64) * items + i)
    keys = np.unique(np.concatenate(keys))
    u, i = np.divmod(keys, items)
    del keys
    train = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(users, items))
    del u, i
    features = {}
    for name, dim in dims.items():
        rank = 32
        factors = rng.standard_normal((items, rank), dtype=np.float32)
        mixing = rng.standard_normal((rank, dim), dtype=np.float32) / np.sqrt(rank)
        table = factors @ mixing
        table += 0.5 * rng.standard_normal((items, dim), dtype=np.float32)
        features[name] = table
    return train, features


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_path", nargs="?")
    parser.add_argument("--preset", choices=PRESET_NAMES)
    parser.add_argument("--user-knn-k", type=int)
    parser.add_argument("--item-knn-k", type=int)
    parser.add_argument("--save", help="write each graph as scipy .npz into this folder")
    parser.add_argument("--knn", choices=("exact", "faiss"), default="exact")
    parser.add_argument("--nprobe", type=int, default=16, help="faiss lists probed per query")
    parser.add_argument("--nlist", type=int, help="faiss inverted lists (default ~2 sqrt(n))")
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--users", type=int, default=2_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--dims", default="text:384", help="modalities, e.g. image:4096,text:384")
    parser.add_argument("--item-alpha", type=float, default=0.5, help="synthetic popularity skew")
    parser.add_argument("--user-alpha", type=float, default=0.5, help="synthetic activity skew")
    parser.add_argument("--recall-sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2025)
    parser.add_argument(
        "--threads",
        type=int,
        help="threads for every pool (BLAS, OpenMP, numba, torch); default: all cores",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and os.environ.get(_THREADS_SET) != str(args.threads):
        # BLAS and numba read their thread counts when they load: restart with them set
        value = str(args.threads)
        env = dict(os.environ, **{name: value for name in (*_THREAD_VARIABLES, _THREADS_SET)})
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)

    started = time.perf_counter()
    report: dict = {"knn": args.knn, "threads": threads}
    if args.knn == "faiss":
        report["faiss"] = {"nprobe": args.nprobe, "nlist": args.nlist or "2 sqrt(n)"}
    if args.synthetic:
        dims = {part.split(":")[0]: int(part.split(":")[1]) for part in args.dims.split(",")}
        train, features = synthetic(
            args.users,
            args.items,
            args.interactions,
            dims,
            args.seed,
            args.item_alpha,
            args.user_alpha,
        )
        empty = sp.csr_matrix(train.shape, dtype=np.float32)
        dataset = Dataset(train.shape[0], train.shape[1], train, empty, empty, features)
        name = args.preset or "clothing"
        item_degree = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)
        user_degree = np.diff(train.indptr).astype(np.float64)
        report["data"] = {
            "synthetic": True,
            "users": train.shape[0],
            "items": train.shape[1],
            "interactions": int(train.nnz),
            "dims": dims,
            "max_item_degree": int(item_degree.max()),
            "max_user_degree": int(user_degree.max()),
            # Partial products of R^T R and R R^T: the co-occurrence work.
            "item_cooccurrence_work": float((user_degree**2).sum()),
            "user_cooccurrence_work": float((item_degree**2).sum()),
        }
    else:
        if not args.data_path:
            parser.error("DATA_PATH is required unless --synthetic")
        dataset = load(args.data_path)
        name = args.preset or Path(args.data_path).name.lower()
        if name not in PRESET_NAMES:
            parser.error(f"no preset for {name!r}: pass --preset")
        report["data"] = {
            "path": args.data_path,
            "users": dataset.num_users,
            "items": dataset.num_items,
            "interactions": int(dataset.train.nnz),
            "dims": {m: int(f.shape[1]) for m, f in dataset.features.items()},
        }
    report["load_s"] = round(time.perf_counter() - started, 3)
    hyperparameters = dict(get_preset("rearm", name)["hyperparameters"], knn_method=args.knn)
    for key in ("user_knn_k", "item_knn_k"):
        if getattr(args, key) is not None:
            hyperparameters[key] = getattr(args, key)
    arguments = get_model("rearm").graph_arguments(dataset, hyperparameters)
    user_k, item_k = arguments["user_knn_k"], arguments["item_knn_k"]
    modalities = dataset.modalities
    report["preset"] = name
    report["parameters"] = arguments

    step_rss: dict[str, float] = {}
    build_started = time.perf_counter()
    graphs = build_graphs(
        dataset,
        **arguments,
        faiss_nprobe=args.nprobe,
        faiss_nlist=args.nlist,
        seed=args.seed,
        progress=lambda step: (
            step_rss.__setitem__(step, round(peak_rss_mb(), 1)),
            print(f"[{time.perf_counter() - build_started:8.1f}s] {step}", file=sys.stderr),
        ),
    )
    report["total_s"] = round(time.perf_counter() - build_started, 3)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    seconds = graph_seconds(graphs.timings)
    report["graphs"] = {
        name: {"seconds": round(seconds[name], 3), "nnz": int(getattr(graphs, name)._nnz())}
        for name in GRAPH_FILES
        if getattr(graphs, name) is not None
    }
    report["steps"] = {step: round(value, 3) for step, value in graphs.timings.items()}
    report["peak_rss_mb_before_step"] = step_rss

    if args.knn == "faiss" and len(modalities) == 1:
        # Neighbour recall of the approximate kNN lists (the rows of the single-modality
        # semantic graphs) against exact cosine kNN, on sampled rows.
        (name,) = modalities
        report["recall"] = {
            "item_semantic": graph_recall(
                graphs.item_semantic, dataset.features[name], item_k, args.recall_sample
            ),
            "user_interest_graph": graph_recall(
                graphs.user_interest_graph,
                graphs.user_interest_features[name],
                user_k,
                args.recall_sample,
            ),
        }
        report["peak_rss_mb_with_recall"] = round(peak_rss_mb(), 1)

    if args.save:
        save_graphs(graphs, args.save)
    print(json.dumps(report, indent=1))
    return 0


def graph_recall(graph: torch.Tensor, features: np.ndarray, k: int, sample: int) -> float:
    """Recall of a kNN graph's rows against exact kNN lists of `sample` random rows."""
    rows = np.sort(np.random.default_rng(0).choice(features.shape[0], sample, replace=False))
    csr = to_scipy(graph)
    width = min(k, features.shape[0])
    approximate = np.full((len(rows), width), -1, dtype=np.int64)
    for position, row in enumerate(rows):
        found = csr.indices[csr.indptr[row] : csr.indptr[row + 1]][:width]
        approximate[position, : len(found)] = found
    exact = sample_recall_lists(features, rows, k)
    return round(neighbour_recall(approximate, exact), 4)


if __name__ == "__main__":
    sys.exit(main())
