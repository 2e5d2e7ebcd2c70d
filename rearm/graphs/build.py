"""Combining graphs into the REARM homographs, and `build_graphs`, the one entry point that builds
every graph the model needs from a Dataset (optionally through the data layer's GraphCache)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from rearm.data.cache import GraphCache
from rearm.data.dataset import Dataset
from rearm.errors import ConfigError
from rearm.graphs.bipartite import bipartite_graph
from rearm.graphs.cooccurrence import (
    DEFAULT_MAX_BLOCK_ENTRIES,
    _check_options,
    cooccurrence_graph,
)
from rearm.graphs.similarity import (
    DEFAULT_GRAM_MAX_BYTES,
    KNN_METHODS,
    choose_user_method,
    gram_matrix,
    knn_neighbours,
    knn_neighbours_from_gram,
    neighbours_to_csr,
    user_interest,
    user_interest_neighbours,
)
from rearm.graphs.sparse import as_binary_csr, to_scipy, to_torch
from rearm.io import atomic_open

# Bump when a builder's output changes for the same inputs, so cached graphs are rebuilt.
BUILDER_VERSION = 2  # 2: kNN ties keep the lower index (were torch.topk's order)


@dataclass
class Graphs:
    """Every graph REARM consumes; all graphs are float32 torch sparse CSR.

    Attributes:
        bipartite: [(U + I), (U + I)], users first, D^-1/2 A D^-1/2.
        item_cooccurrence: [I, I]; user_cooccurrence: [U, U].
        item_semantic: [I, I], item kNN graphs combined over modalities.
        user_interest_graph: [U, U], user interest kNN graphs combined over modalities.
        item_homograph: [I, I] = a_ii C_item + (1 - a_ii) S_item.
        user_homograph: [U, U] = a_uu C_user + (1 - a_uu) S_user.
        A graph that was not asked for is None: every graph of a side left out of
        `build_graphs(homographs=...)`, the co-occurrence graph of a side whose co-occurrence
        weight is 0 and the semantic graph of a side whose co-occurrence weight is 1.
        user_interest_features: {modality: float32 [U, D_m]}, P_m (initial user preference table).
        timings: {step name: seconds}.
    """

    bipartite: torch.Tensor
    item_cooccurrence: torch.Tensor | None
    user_cooccurrence: torch.Tensor | None
    item_semantic: torch.Tensor | None
    user_interest_graph: torch.Tensor | None
    item_homograph: torch.Tensor | None
    user_homograph: torch.Tensor | None
    user_interest_features: dict[str, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


# Every graph field of Graphs, with the file name `save_graphs` writes it to.
GRAPH_FILES = {
    "bipartite": "bipartite.npz",
    "item_cooccurrence": "item_cooccurrence.npz",
    "user_cooccurrence": "user_cooccurrence.npz",
    "item_semantic": "item_semantic.npz",
    "user_interest_graph": "user_interest.npz",
    "item_homograph": "item_homograph.npz",
    "user_homograph": "user_homograph.npz",
}


def save_graphs(
    graphs: Graphs, folder: str | os.PathLike, *, compressed: bool = False
) -> dict[str, str]:
    """Write each graph that was built (not None) as a SciPy sparse `.npz` (CSR; rows = the node
    the row belongs to; user and item indices from 0 in their own ranges; bipartite users first)
    into `folder`, each file atomically. Returns {graph name: file name} of the files written
    (names from GRAPH_FILES).

    `compressed` zips the arrays: on the graphs of a 48,000-node set (8.8 million entries) the
    files were 40 MB instead of 68 MB, but writing them took 8.2 s instead of 0.15 s, because
    random indices and float weights compress slowly and little. `sp.load_npz` reads either."""
    folder = Path(folder)
    written = {}
    for name, filename in GRAPH_FILES.items():
        graph = getattr(graphs, name)
        if graph is None:
            continue
        with atomic_open(folder / filename, "wb") as handle:
            sp.save_npz(handle, to_scipy(graph), compressed=compressed)
        written[name] = filename
    return written


def graph_seconds(timings: Mapping[str, float]) -> dict[str, float]:
    """Seconds spent on each output graph, from `Graphs.timings` (semantic graphs add up their
    modalities; the user interest graph includes the interest features; a Gram matrix runs inside
    the first step that needs it, so it is not added again; combining counts once, for
    item_homograph)."""
    prefixes = {
        "item_semantic": ("item_semantic:",),
        "user_interest_graph": ("user_interest_graph:", "user_interest_features:"),
        "item_homograph": ("combine",),
        "user_homograph": (),
    }
    return {
        name: sum(
            value
            for step, value in timings.items()
            if step == name or step.startswith(prefixes.get(name, (name,)))
        )
        for name in GRAPH_FILES
    }


def modality_weights(modalities: list[str], image_weight: float) -> dict[str, float]:
    """The published two-modality convention (`i_mm_image_weight`, `u_mm_image_weight`) for any
    modality list: "image" gets `image_weight`, the others share 1 - image_weight equally; a
    single modality gets 1.0. Without an "image" modality all share equally."""
    modalities = list(modalities)
    if not modalities:
        raise ConfigError("modality_weights needs at least one modality")
    if not 0.0 <= image_weight <= 1.0:
        raise ConfigError(f"image weight must be in [0, 1], got {image_weight}")
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" not in modalities:
        return {name: 1.0 / len(modalities) for name in modalities}
    rest = (1.0 - image_weight) / (len(modalities) - 1)
    return {name: (image_weight if name == "image" else rest) for name in modalities}


def check_modality_weights(
    weights: Mapping[str, float], modalities: list[str], label: str
) -> dict[str, float]:
    """Weights must name exactly `modalities`, be >= 0 and sum to 1 (ConfigError otherwise)."""
    names, expected = set(weights), set(modalities)
    if names != expected:
        missing, unknown = sorted(expected - names), sorted(names - expected)
        raise ConfigError(
            f"{label}: weights must cover exactly the modalities {sorted(expected)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
        )
    values = {name: float(weights[name]) for name in modalities}
    if any(value < 0 or not math.isfinite(value) for value in values.values()):
        raise ConfigError(f"{label}: weights must be finite and >= 0, got {values}")
    if not math.isclose(sum(values.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"{label}: weights must sum to 1, got {sum(values.values())}")
    return values


def combine_modalities(
    graphs: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> torch.Tensor:
    """Weighted sum of per-modality graphs, sum_m w_m G_m (all [n, n]); `weights` must cover
    exactly the modalities of `graphs` and sum to 1. Returns torch sparse CSR [n, n]."""
    values = check_modality_weights(weights, list(graphs), "combine_modalities")
    return to_torch(_weighted_sum({name: to_scipy(graphs[name]) for name in graphs}, values))


def homograph(
    cooccurrence: torch.Tensor, semantic: torch.Tensor, cooccurrence_weight: float
) -> torch.Tensor:
    """H = a C + (1 - a) S (`ii_co_weight` / `uu_co_weight`), torch sparse CSR [n, n]."""
    a = _check_fraction(cooccurrence_weight, "cooccurrence_weight")
    return to_torch(
        _weighted_sum({"c": to_scipy(cooccurrence), "s": to_scipy(semantic)}, {"c": a, "s": 1 - a})
    )


def build_graphs(
    dataset: Dataset,
    *,
    user_knn_k: int,
    item_knn_k: int,
    user_modality_weights: Mapping[str, float],
    item_modality_weights: Mapping[str, float],
    user_cooccurrence_weight: float,
    item_cooccurrence_weight: float,
    cooccurrence_weighting: str = "softmax",
    cooccurrence_pad: str = "resample",
    cooccurrence_empty: str = "popular",
    knn_method: str = "exact",
    faiss_nprobe: int = 16,
    faiss_nlist: int | None = None,
    user_interest_method: str = "auto",
    seed: int = 2025,
    homographs: Collection[str] = ("user", "item"),
    cooccurrence_block_size: int = 4096,
    cooccurrence_max_block_entries: int = DEFAULT_MAX_BLOCK_ENTRIES,
    knn_block_size: int | None = None,
    gram_max_bytes: int = DEFAULT_GRAM_MAX_BYTES,
    cache: GraphCache | None = None,
    progress: Callable[[str], None] | None = None,
) -> Graphs:
    """Build the bipartite graph and the four homographs of REARM from `dataset.train`.

    Args:
        dataset: interactions (train only is used) and item features {modality: [I, D_m]}.
        user_knn_k, item_knn_k: k of the user graphs (co-occurrence and interest kNN) and of the
            item graphs (co-occurrence and semantic kNN).
        user_modality_weights, item_modality_weights: {modality: weight}, covering exactly
            `dataset.modalities`, summing to 1 (see `modality_weights` for the published
            convention). Zero-weight modalities are not built.
        user_cooccurrence_weight, item_cooccurrence_weight: `uu_co_weight`, `ii_co_weight`.
        cooccurrence_weighting, cooccurrence_pad, cooccurrence_empty: see `cooccurrence_graph`
            (defaults reproduce the reference).
        knn_method: "exact" or "faiss" (approximate; optional dependency).
        faiss_nprobe, faiss_nlist: inverted lists probed per query and list count (default
            ~2 sqrt(n)) of the faiss search: fewer probes are faster and find fewer true
            neighbours (`sample_recall` measures it).
        user_interest_method: "auto", "direct" or "gram" (see `user_interest_graph`).
        seed: co-occurrence padding and faiss seed.
        homographs: the sides ("user", "item") whose graphs are built; the other side's graphs
            are None (REARM's no_user_graph / no_item_graph / no_homographs ablations). Within a
            side, a graph with weight 0 in its homograph is not built either (None).
        cooccurrence_block_size, cooccurrence_max_block_entries, knn_block_size, gram_max_bytes:
            memory knobs; they do not change the result (not part of cache keys).
        cache: a GraphCache to reuse graphs built from the same data and arguments.
        progress: called with a short message as each step starts.

    Returns:
        Graphs (see its docstring for shapes).
    """
    modalities = dataset.modalities
    if not modalities:
        raise ConfigError("build_graphs needs at least one item feature modality")
    user_weights = check_modality_weights(
        user_modality_weights, modalities, "user_modality_weights"
    )
    item_weights = check_modality_weights(
        item_modality_weights, modalities, "item_modality_weights"
    )
    a_user = _check_fraction(user_cooccurrence_weight, "user_cooccurrence_weight")
    a_item = _check_fraction(item_cooccurrence_weight, "item_cooccurrence_weight")
    sides = set(homographs) if not isinstance(homographs, str) else {homographs}
    if sides - {"user", "item"}:
        raise ConfigError(f"homographs: expected a subset of ('user', 'item'), got {homographs!r}")
    # which graphs are asked for: {side: (co-occurrence, semantic)}
    wanted = {
        side: (side in sides and alpha > 0, side in sides and alpha < 1)
        for side, alpha in (("user", a_user), ("item", a_item))
    }
    for k, label in ((user_knn_k, "user_knn_k"), (item_knn_k, "item_knn_k")):
        _check_options(k, cooccurrence_weighting, cooccurrence_pad, cooccurrence_empty, label)
    if knn_method not in KNN_METHODS:
        raise ConfigError(f"knn_method {knn_method!r} is not one of {', '.join(KNN_METHODS)}")

    timings: dict[str, float] = {}
    train = as_binary_csr(dataset.train, "train")
    fingerprint = dataset.fingerprint() if cache is not None else ""

    def step(name: str, arguments: dict, build: Callable[[], sp.spmatrix]) -> sp.csr_matrix:
        if progress is not None:
            progress(name)
        started = time.perf_counter()
        if cache is None:
            result = sp.csr_matrix(build())
        else:
            result = cache.graph(fingerprint, name.split(":")[0], BUILDER_VERSION, arguments, build)
        timings[name] = time.perf_counter() - started
        return result

    cooccurrence_options = {
        "weighting": cooccurrence_weighting,
        "pad": cooccurrence_pad,
        "empty": cooccurrence_empty,
        "seed": seed,
    }
    memory_options = {
        "block_size": cooccurrence_block_size,
        "max_block_entries": cooccurrence_max_block_entries,
    }
    bipartite = step("bipartite", {}, lambda: to_scipy(bipartite_graph(train)))
    item_cooccurrence = user_cooccurrence = None
    if wanted["item"][0]:
        item_cooccurrence = step(
            "item_cooccurrence",
            {"k": item_knn_k, **cooccurrence_options},
            lambda: to_scipy(
                cooccurrence_graph(
                    train.T.tocsr(), item_knn_k, **cooccurrence_options, **memory_options
                )
            ),
        )
    if wanted["user"][0]:
        user_cooccurrence = step(
            "user_cooccurrence",
            {"k": user_knn_k, **cooccurrence_options},
            lambda: to_scipy(
                cooccurrence_graph(train, user_knn_k, **cooccurrence_options, **memory_options)
            ),
        )

    # User interest features P_m are needed by the model for every modality.
    interest: dict[str, np.ndarray] = {}
    for name in modalities:
        if progress is not None:
            progress(f"user_interest_features:{name}")
        started = time.perf_counter()
        features = dataset.features[name]
        if cache is None:
            interest[name] = user_interest(train, features)
        else:
            interest[name] = cache.array(
                fingerprint,
                "user_interest_features",
                BUILDER_VERSION,
                {"modality": name},
                lambda features=features: user_interest(train, features),
            )
        timings[f"user_interest_features:{name}"] = time.perf_counter() - started

    knn_options: dict = {"method": knn_method, "seed": seed if knn_method == "faiss" else None}
    if knn_method == "faiss":
        knn_options.update(nprobe=faiss_nprobe, nlist=faiss_nlist)

    buffers: dict[str, np.ndarray] = {}

    def semantic(name: str) -> tuple[sp.csr_matrix | None, sp.csr_matrix | None]:
        """(item kNN graph, user interest graph) of one modality; None where its weight is 0."""
        features = dataset.features[name]
        need_item = wanted["item"][1] and item_weights[name] > 0
        need_user = wanted["user"][1] and user_weights[name] > 0
        use_gram = (
            knn_method == "exact"
            and need_user
            and (
                user_interest_method == "gram"
                or (
                    user_interest_method == "auto"
                    and choose_user_method(train, features.shape[1], gram_max_bytes) == "gram"
                )
            )
        )
        shared: dict[str, torch.Tensor] = {}

        def gram() -> torch.Tensor:
            # One X X^T per modality serves the item kNN and the gram user interest path; the
            # modalities take turns in one buffer.
            if "gram" not in shared:
                started = time.perf_counter()
                if "gram" not in buffers:
                    buffers["gram"] = np.empty((train.shape[1],) * 2, dtype=np.float32)
                shared["gram"] = gram_matrix(features, out=buffers["gram"])
                timings[f"gram:{name}"] = time.perf_counter() - started
            return shared["gram"]

        def build_item() -> sp.csr_matrix:
            if use_gram:
                lists = knn_neighbours_from_gram(gram(), item_knn_k, block_size=knn_block_size)
            else:
                lists = knn_neighbours(
                    features, item_knn_k, block_size=knn_block_size, **knn_options
                )
            return neighbours_to_csr(*lists)

        def build_user() -> sp.csr_matrix:
            lists = user_interest_neighbours(
                train,
                features,
                user_knn_k,
                method="gram" if use_gram else "direct",
                knn_method=knn_method,
                block_size=knn_block_size,
                seed=seed,
                nprobe=faiss_nprobe,
                nlist=faiss_nlist,
                gram=gram() if use_gram else None,
                interest=interest[name],
            )
            return neighbours_to_csr(*lists)

        item = user = None
        if need_item:
            item = step(
                f"item_semantic:{name}",
                {"modality": name, "k": item_knn_k, **knn_options},
                build_item,
            )
        if need_user:
            user = step(
                f"user_interest_graph:{name}",
                {"modality": name, "k": user_knn_k, **knn_options},
                build_user,
            )
        return item, user

    item_graphs: dict[str, sp.csr_matrix] = {}
    user_graphs: dict[str, sp.csr_matrix] = {}
    for name in modalities:
        item, user = semantic(name)
        if item is not None:
            item_graphs[name] = item
        if user is not None:
            user_graphs[name] = user

    started = time.perf_counter()
    item_semantic = user_semantic = item_homograph = user_homograph = None
    if wanted["item"][1]:
        item_semantic = _weighted_sum(item_graphs, item_weights, train.shape[1])
    if wanted["user"][1]:
        user_semantic = _weighted_sum(user_graphs, user_weights, train.shape[0])
    if "item" in sides:
        item_homograph = _weighted_sum(
            {"c": item_cooccurrence, "s": item_semantic},
            {"c": a_item, "s": 1 - a_item},
            train.shape[1],
        )
    if "user" in sides:
        user_homograph = _weighted_sum(
            {"c": user_cooccurrence, "s": user_semantic},
            {"c": a_user, "s": 1 - a_user},
            train.shape[0],
        )
    timings["combine"] = time.perf_counter() - started

    def torch_or_none(graph: sp.csr_matrix | None) -> torch.Tensor | None:
        return None if graph is None else to_torch(graph)

    return Graphs(
        bipartite=to_torch(bipartite),
        item_cooccurrence=torch_or_none(item_cooccurrence),
        user_cooccurrence=torch_or_none(user_cooccurrence),
        item_semantic=torch_or_none(item_semantic),
        user_interest_graph=torch_or_none(user_semantic),
        item_homograph=torch_or_none(item_homograph),
        user_homograph=torch_or_none(user_homograph),
        user_interest_features=interest,
        timings=timings,
    )


def _weighted_sum(
    graphs: Mapping[str, sp.csr_matrix], weights: Mapping[str, float], n: int | None = None
) -> sp.csr_matrix:
    """sum_m w_m G_m over the graphs with a nonzero weight (explicit zeros kept out); a graph
    given as None must have weight 0 (it was not built because it would not count)."""
    total = None
    for name, graph in graphs.items():
        weight = float(weights.get(name, 0.0))
        if weight == 0.0:
            continue
        if graph is None:
            raise ValueError(f"graph {name!r} has weight {weight} but was not built")
        term = sp.csr_matrix(graph, dtype=np.float32) * np.float32(weight)
        total = term if total is None else total + term
    if total is None:
        if n is None:
            n = next(iter(graphs.values())).shape[0]
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix(total, dtype=np.float32)


def _check_fraction(value: float, label: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{label} must be in [0, 1], got {value}")
    return value
