"""`rearm plan`: what a REARM run will cost, estimated before anything is built.

The plan reads only the data set's shape (sizes, modality widths, node degrees) and the resolved
configuration, and adds up, in bytes:

  * every graph REARM builds (bipartite, user / item co-occurrence, item semantic, user interest,
    the two homographs): nnz and bytes of its float32 torch CSR (int64 indices);
  * the feature tables (the data set's, REARM's trainable copies, the user interest tables P_m),
    the parameters, their gradients and AdamW's two moments;
  * the activations autograd keeps for one training step: a count of the tensors REARM's forward
    saves, per user and per item node (checked against torch's saved-tensor hooks in the tests);
  * the transient work of graph building: the largest block the builders hold at once (a dense
    [block, n] similarity block or the item Gram matrix, a block of a sparse co-occurrence
    product and the top-k triples of all rows, the scipy-to-torch conversions).

Five phases are planned and the peak is the largest: graph building, model construction (every
graph alive next to the new model's copies of the tables), a training step of the first epoch
(model, graphs, gradients, AdamW state, saved activations), a training step of later epochs (the
same plus the copy of the best state that the trainer keeps from the first validation on) and
validation (the larger of the full forward without gradients and h beside one block of scores,
plus the best-state copy, which later improvements copy into).
`Plan.peak_bytes_for(epochs)` is the peak of a run of that many epochs. Seconds per epoch come
from a short calibration on this machine (`calibrate`): the kinds of work in one step are timed
at small sizes and scaled by their counts in the real step (dense products by their flops, sparse
graph products by nnz x width at the rate measured for a dense operand of their size, elementwise
passes by node x width, AdamW by parameters).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from rearm.errors import ConfigError, DataError

GB = 1 << 30
# Bytes of one stored entry of a torch sparse CSR graph (int64 column + float32 value) and of a
# scipy CSR graph while it is being built (int32 column + float32 value).
TORCH_ENTRY = 12
SCIPY_ENTRY = 8
# Resident memory of a process that has imported torch, numpy, scipy and rearm (measured on the
# development machine: 291 MB) plus the numba kernels it loads while building graphs.
IMPORT_BASELINE = 350 << 20
PLANNED_MODELS = ("rearm",)
MEMORY_CHECK_VARIABLE = "REARM_MEMORY_LIMIT"
CALIBRATION_BATCH = 2048
# Sizes of the dense operand [nodes, width] at which the calibration times a random sparse
# product: from cache-resident to memory-bound on machines with up to ~64 MB of last-level cache.
# A size between two rungs is interpolated (log-log).
CALIBRATION_LADDER_BYTES = (2 << 20, 8 << 20, 32 << 20, 128 << 20)
# (users, items) of the two small synthetic sets whose real REARM steps the calibration times.
CALIBRATION_SETS = ((2000, 1000), (16000, 8000))


@dataclass(frozen=True)
class DataShape:
    """What the plan needs to know about a data set.

    Attributes:
        num_users, num_items, train_interactions: sizes (train pairs after deduplication).
        modalities: {name: width} of the item feature tables.
        heldout_interactions: valid + test pairs.
        user_partners, item_partners: per node, an upper bound on its distinct co-occurring
            nodes (sum over its interactions of the other side's degree minus one); None for a
            hypothetical catalog (then the mean degrees stand in).
        users_without_train: users whose interest tables are zero rows (kNN keeps only self).
        zero_feature_items: {modality: items whose feature row is all zero}.
        source: where the shape came from.
    """

    num_users: int
    num_items: int
    train_interactions: int
    modalities: dict[str, int]
    heldout_interactions: int = 0
    user_partners: np.ndarray | None = field(default=None, repr=False)
    item_partners: np.ndarray | None = field(default=None, repr=False)
    users_without_train: int = 0
    zero_feature_items: dict[str, int] = field(default_factory=dict)
    source: str = "synthetic"


def data_shape(dataset) -> DataShape:
    """The DataShape of a loaded Dataset (reads the train matrix and each feature table once)."""
    from rearm.graphs.sparse import as_binary_csr

    train = as_binary_csr(dataset.train, "train")
    user_degree = np.diff(train.indptr).astype(np.int64)
    item_degree = np.bincount(train.indices, minlength=dataset.num_items).astype(np.int64)
    user_partners = train @ np.maximum(item_degree - 1, 0).astype(np.float64)
    item_partners = train.T.tocsr() @ np.maximum(user_degree - 1, 0).astype(np.float64)
    zero_rows = {}
    for name, table in dataset.features.items():
        zero = 0
        for start in range(0, table.shape[0], 65536):
            block = np.asarray(table[start : start + 65536])
            zero += int((~block.any(axis=1)).sum())
        zero_rows[name] = zero
    return DataShape(
        num_users=int(dataset.num_users),
        num_items=int(dataset.num_items),
        train_interactions=int(train.nnz),
        modalities={name: int(table.shape[1]) for name, table in dataset.features.items()},
        heldout_interactions=int(dataset.valid.nnz + dataset.test.nnz),
        user_partners=np.rint(user_partners).astype(np.int64),
        item_partners=np.rint(item_partners).astype(np.int64),
        users_without_train=int((user_degree == 0).sum()),
        zero_feature_items=zero_rows,
        source=str(dataset.source or "dataset"),
    )


def parse_dims(text: str) -> dict[str, int]:
    """Modality widths of `--synthetic DIMS`: '384,512' names them by position (modality_1,
    modality_2, ...); 'text:384,image:512' names them. ConfigError otherwise."""
    from rearm.data.synth import parse_modalities

    parts = [part.strip() for part in str(text).split(",")]
    if all(part.isdigit() for part in parts) and parts:
        widths = [int(part) for part in parts]
        if any(width < 1 for width in widths):
            raise ConfigError(f"--synthetic DIMS {text!r}: every width must be >= 1")
        return {f"modality_{n + 1}": width for n, width in enumerate(widths)}
    try:
        return parse_modalities(text)
    except DataError as error:
        raise ConfigError(
            f"--synthetic DIMS {text!r}: expected widths like 384,512 or NAME:DIM pairs like "
            f"text:384,image:512 ({error})"
        ) from None


def synthetic_shape(
    users: int, items: int, interactions: int, dims: str | Mapping[str, int]
) -> DataShape:
    """The DataShape of a hypothetical catalog: `interactions` train pairs spread over `users`
    and `items`, feature widths `dims` ('384,512', 'text:384,image:512' or a mapping)."""
    modalities = parse_dims(dims) if isinstance(dims, str) else dict(dims)
    for label, value, least in (
        ("USERS", users, 1),
        ("ITEMS", items, 1),
        ("INTERACTIONS", interactions, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ConfigError(f"--synthetic {label}: must be a positive integer, got {value!r}")
    if interactions > users * items:
        raise ConfigError(
            f"--synthetic INTERACTIONS: {interactions:,} exceeds USERS x ITEMS = {users * items:,}"
        )
    if not modalities:
        raise ConfigError("--synthetic DIMS: at least one modality width is needed")
    return DataShape(
        num_users=int(users),
        num_items=int(items),
        train_interactions=int(interactions),
        modalities=modalities,
        source=f"synthetic {users:,} users x {items:,} items x {interactions:,} interactions",
    )


@dataclass(frozen=True)
class GraphEstimate:
    name: str
    shape: tuple[int, int]
    nnz: int
    bound: bool  # True: nnz is an upper bound; False: exact

    @property
    def bytes(self) -> int:
        return torch_csr_bytes(self.shape[0], self.nnz)


@dataclass
class Plan:
    """Estimated memory (bytes) and time of one REARM run; `to_dict()` for JSON."""

    source: str
    model: str
    settings: dict
    shape: dict
    graphs: list[GraphEstimate]
    components: dict[str, int]
    phases: dict[str, dict[str, int]]
    trainable_parameters: int
    parameters: int
    steps_per_epoch: int
    epoch: dict | None = None
    activations: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    disk: dict[str, int] = field(default_factory=dict)  # files a run writes, in bytes

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def peak_bytes(self) -> int:
        return sum(self.phases[self.peak_phase].values())

    def peak_phase_for(self, epochs: int | None) -> str:
        """The phase of the planned peak of a run of `epochs` epochs (None: any length; one
        epoch never holds the best-state copy next to a training step's activations)."""
        phases = [p for p in self.phases if epochs is None or epochs > 1 or "later" not in p]
        return max(phases, key=self.phase_bytes)

    def peak_bytes_for(self, epochs: int | None) -> int:
        """Planned peak of a run of `epochs` epochs (None: any length)."""
        return self.phase_bytes(self.peak_phase_for(epochs))

    def phase_bytes(self, phase: str) -> int:
        return sum(self.phases[phase].values())

    def dominant(self) -> tuple[str, int]:
        """(part, bytes) of the largest part of the peak phase."""
        parts = self.phases[self.peak_phase]
        name = max(parts, key=parts.get)
        return name, parts[name]

    def check_memory(
        self, available: int | None, *, what: str = "this run", epochs: int | None = None
    ) -> str | None:
        """The refusal message when the peak of a run of `epochs` epochs (None: any length)
        exceeds `available` bytes, else None."""
        phase = self.peak_phase_for(epochs)
        peak = self.phase_bytes(phase)
        if available is None or peak <= available:
            return None
        parts = self.phases[phase]
        part = max(parts, key=parts.get)
        size = parts[part]
        limit = (
            f"the limit is {_gb(available)} ({MEMORY_CHECK_VARIABLE})"
            if os.environ.get(MEMORY_CHECK_VARIABLE)
            else f"{_gb(available)} is available"
        )
        return (
            f"{what} needs about {_gb(peak)} at its peak ({phase}) but "
            f"{limit}: {_gb(peak - available)} over; the "
            f"largest part is {part} ({_gb(size)}). See `rearm plan` for the breakdown; "
            "--no-memory-check (or training key memory_check=false) trains anyway"
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "model": self.model,
            "settings": self.settings,
            "shape": self.shape,
            "graphs": {
                g.name: {
                    "shape": list(g.shape),
                    "nnz": g.nnz,
                    "nnz_is_upper_bound": g.bound,
                    "bytes": g.bytes,
                }
                for g in self.graphs
            },
            "components_bytes": self.components,
            "trainable_parameters": self.trainable_parameters,
            "parameters": self.parameters,
            "phases_bytes": {
                name: {"total": self.phase_bytes(name), **parts}
                for name, parts in self.phases.items()
            },
            "peak": {
                "phase": self.peak_phase,
                "bytes": self.peak_bytes,
                "dominant": self.dominant()[0],
            },
            "activations_bytes": self.activations,
            "disk_bytes": self.disk,
            "steps_per_epoch": self.steps_per_epoch,
            "epoch": self.epoch,
            "notes": self.notes,
        }


def torch_csr_bytes(rows: int, nnz: int) -> int:
    return 8 * (rows + 1) + TORCH_ENTRY * nnz


def _gb(size: float) -> str:
    return f"{size / GB:.2f} GB"


def _cooccurrence_nnz(n: int, k: int, partners: np.ndarray | None, mean_partners: float) -> int:
    """Upper bound on the co-occurrence graph's nnz: a row keeps at most min(k, distinct
    co-occurring nodes) entries (padding duplicates add up), an empty row gets k popular ones."""
    if partners is None:
        per_row = min(k, mean_partners) if mean_partners >= 1 else k
        return int(math.ceil(n * per_row))
    return int(np.where(partners > 0, np.minimum(partners, k), k).sum())


def _knn_nnz(n: int, k: int, zero_rows: int) -> int:
    """Exact nnz of a kNN graph: min(k, n) per row, self only for a zero row."""
    kk = min(k, n)
    return n * kk - zero_rows * (kk - 1)


def plan(
    shape: DataShape,
    hyperparameters: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    *,
    model: str = "rearm",
    calibration: Mapping[str, float] | None = None,
) -> Plan:
    """Plan one REARM run on a data set of `shape`.

    Args:
        shape: from `data_shape` (a loaded data set) or `synthetic_shape` (a hypothetical one).
        hyperparameters: REARM's from_dataset keywords (missing ones take their defaults).
        training: training keys (batch_size, eval_batch_size; missing ones take the defaults).
        model: only "rearm" is planned.
        calibration: seconds per unit of work from `calibrate()`; None plans memory only.

    Returns:
        Plan.

    Raises:
        ConfigError: another model, or an unknown / ill-typed hyperparameter.
    """
    from rearm.experiments.config import TRAINING_DEFAULTS
    from rearm.graphs.build import check_modality_weights
    from rearm.models import get_model

    if model not in PLANNED_MODELS:
        raise ConfigError(
            f"rearm plan: model {model!r} is not planned (planned: {', '.join(PLANNED_MODELS)})"
        )
    model_class = get_model(model)
    h = model_class.validate_hyperparameters(dict(hyperparameters or {}), where="plan")
    t = dict(TRAINING_DEFAULTS) | dict(getattr(model_class, "training_defaults", {}))
    t.update(training or {})
    arguments = model_class.graph_arguments(_ShapeView(shape), h)
    modalities = list(shape.modalities)
    check_modality_weights(arguments["user_modality_weights"], modalities, "user_modality_weights")
    check_modality_weights(arguments["item_modality_weights"], modalities, "item_modality_weights")

    U, I, T = shape.num_users, shape.num_items, shape.train_interactions  # noqa: E741
    M, d, r = len(modalities), int(h["embedding_dim"]), int(h["rank"])
    W = (M + 1) * d
    widths = [shape.modalities[m] for m in modalities]
    feature_width = sum(widths)
    sides = set(arguments["homographs"])
    a_user, a_item = arguments["user_cooccurrence_weight"], arguments["item_cooccurrence_weight"]
    user_k, item_k = int(arguments["user_knn_k"]), int(arguments["item_knn_k"])

    # ---- graphs --------------------------------------------------------------------------
    graphs = [GraphEstimate("bipartite", (U + I, U + I), 2 * T, False)]
    mean_user_partners = (T / U) * max(T / I - 1, 0) if U and I else 0
    mean_item_partners = (T / I) * max(T / U - 1, 0) if U and I else 0
    built = {}
    for side, n, k, alpha, partners, mean_partners in (
        ("item", I, item_k, a_item, shape.item_partners, mean_item_partners),
        ("user", U, user_k, a_user, shape.user_partners, mean_user_partners),
    ):
        if side not in sides:
            continue
        weights = arguments[f"{side}_modality_weights"]
        if alpha > 0:
            built[f"{side}_cooccurrence"] = GraphEstimate(
                f"{side}_cooccurrence",
                (n, n),
                _cooccurrence_nnz(n, k, partners, mean_partners),
                True,
            )
        if alpha < 1:
            used = [m for m in modalities if weights[m] > 0]
            zero = {
                m: shape.zero_feature_items.get(m, 0)
                if side == "item"
                else shape.users_without_train
                for m in used
            }
            per_modality = [_knn_nnz(n, k, zero[m]) for m in used]
            exact = len(per_modality) == 1
            semantic = "item_semantic" if side == "item" else "user_interest_graph"
            built[semantic] = GraphEstimate(
                semantic, (n, n), min(sum(per_modality), n * n), not exact
            )
            built[f"{semantic}:per_modality"] = per_modality  # type: ignore[assignment]
        parts = [
            built[name].nnz
            for name in (
                f"{side}_cooccurrence",
                "item_semantic" if side == "item" else "user_interest_graph",
            )
            if name in built
        ]
        built[f"{side}_homograph"] = GraphEstimate(
            f"{side}_homograph", (n, n), min(sum(parts), n * n), len(parts) > 1
        )
    per_modality_nnz = {
        side: built.pop(f"{name}:per_modality", [])
        for side, name in (("item", "item_semantic"), ("user", "user_interest_graph"))
    }
    graphs += list(built.values())
    by_name = {g.name: g for g in graphs}

    # ---- feature tables, parameters -------------------------------------------------------
    data_features = 4 * I * feature_width
    interest = 4 * U * feature_width
    interactions = 12 * (T + shape.heldout_interactions) + 3 * 8 * (U + 1)
    tables = 4 * (I + U) * feature_width
    ids = (U + I) * d
    projections = 2 * sum(width * d + d for width in widths)
    attention = 8 * M + (8 * M if M > 1 else 0)
    meta = (
        0
        if h["no_meta"]
        else 2 * ((M * d * d + d) + 2 * (d * d * r + d * r + (d * r) ** 2 + d * r + 1))
    )
    small = projections + attention + meta + 2 * d + 1
    parameters = (I + U) * feature_width + ids + small
    trainable = ids + small + ((I + U) * feature_width if h["train_feature_tables"] else 0)
    kept_graphs = sum(
        2 * by_name[name].bytes
        for name in ("bipartite", "item_homograph", "user_homograph")
        if name in by_name
    )

    # ---- activations of one step (tensors autograd saves; see the module docstring) ---------
    # each homograph's normalize_rows keeps its [n, W] output, the row norms and a bool mask
    # (a quarter of a float) per node
    normalized = W + 1.25
    attention = 2 * d + M * (4 * d + 2) + (M * (3 * d + 2) if M > 1 else 0) - 2 * W
    item_floats = normalized + (attention if not h["no_attention"] else 0)
    saved = U * normalized + I * item_floats
    meta_floats = 0.0
    if not h["no_meta"]:
        # per side: the knowledge vector, three [n, d r] tensors per low-rank MLP (the last its
        # normalize_rows output, with 1.25 floats of norm and mask); the propagated views too,
        # which the knowledge Linear keeps, unless the knowledge is detached (the published
        # quirk: then it is computed without autograd)
        kept_views = 0 if h["detach_knowledge"] else W
        meta_floats = (U + I) * (6 * d * r + d + kept_views + 2.5)
        saved += meta_floats
    batch = int(t["batch_size"])
    distinct_users, distinct_items = min(batch, U), min(2 * batch, I)
    pairs = M * (M - 1) // 2
    batch_floats = 3 * batch * W * 30 + 3 * pairs * (distinct_users**2 + distinct_items**2)
    # in flight beyond what is saved: the propagation's running sum and layer output in the
    # forward pass, and about three gradients of the full [(U + I), W] views in the backward
    transient = 3 * (U + I) * W
    activations = round(4 * (saved + batch_floats + transient))
    # validation (no autograd): first the full forward, whose peak is either the propagation
    # (its input, running sum and layer outputs: about 4.8 [(U + I), W] tensors) or the
    # meta-network's per-node low-rank transforms (about 4.5 floats per node per d r entry,
    # beside the propagated views); then h beside one block of scores and the eighth of a block
    # more that topk over it takes. Coefficients measured with benchmarks/eval_memory.py (every
    # tensor its own mapping, so RSS follows the live tensors).
    meta_phase = 0 if h["no_meta"] else 4.5 * d * r + W
    forward = 4 * (U + I) * max(4.8 * W, meta_phase)
    h_width = W if not h["no_meta"] else M * d
    eval_block = min(int(t["eval_batch_size"]), U)
    ranking = 4 * (U + I) * h_width + 4.5 * eval_block * I
    evaluation = round(max(forward, ranking))

    components = {
        "interactions": interactions,
        "data_features": data_features,
        "user_interest_features": interest,
        "graphs_kept_for_training": kept_graphs,
        "model_feature_tables": tables,
        "id_embeddings": 4 * ids,
        "other_parameters": 4 * small,
        "gradients": 4 * trainable,
        "adamw_state": 8 * trainable,
        "activations_one_step": activations,
        "best_state_copy": 4 * parameters,
        "evaluation_block": evaluation,
    }

    # ---- graph building: what is alive, and the largest transient block ---------------------
    scipy_graphs = sum(
        SCIPY_ENTRY * g.nnz + 4 * (g.shape[0] + 1)
        for g in graphs
        if not g.name.endswith("homograph")
    )
    # co-occurrence: one block of the sparse product (at most max_block_entries partial products,
    # about 48 bytes each through the top-k sort) and the int64 / float64 triples of all rows
    cooccurrence = 0
    for side, n, k, partners, mean_partners in (
        ("item", I, item_k, shape.item_partners, mean_item_partners),
        ("user", U, user_k, shape.user_partners, mean_user_partners),
    ):
        if f"{side}_cooccurrence" in by_name:
            work = int(partners.sum()) if partners is not None else int(n * mean_partners)
            cooccurrence = max(cooccurrence, 48 * min(work, 1 << 23) + 80 * n * k)
    # kNN, per modality: the Gram path holds the item Gram matrix (kept in one buffer until all
    # modalities are done) and a [block, I] block; the direct path a normalised copy of the
    # rows and a dense [block, n] similarity block of at most 2^25 entries
    from rearm.graphs.similarity import DEFAULT_GRAM_MAX_BYTES

    gram_bytes = 4 * I * I
    gram_modalities = []
    semantic = 0
    for name, width in shape.modalities.items():
        need_item = "item" in sides and a_item < 1 and arguments["item_modality_weights"][name] > 0
        need_user = "user" in sides and a_user < 1 and arguments["user_modality_weights"][name] > 0
        direct_cost = U * U * width
        gram_cost = I * I * width / 2 + 10 * T * (I + U)
        exact = arguments["knn_method"] == "exact"
        if exact and need_user and gram_bytes <= DEFAULT_GRAM_MAX_BYTES and gram_cost < direct_cost:
            gram_modalities.append(name)
            semantic = max(semantic, 4 * min(I * I, 1 << 25) + 12 * max(U * user_k, I * item_k))
            continue
        if need_item:
            semantic = max(semantic, 4 * I * width + 4 * min(I * I, 1 << 25) + 12 * I * item_k)
        if need_user:
            semantic = max(semantic, 4 * U * width + 4 * min(U * U, 1 << 25) + 12 * U * user_k)
    use_gram = bool(gram_modalities)
    homographs = sum(g.bytes for g in graphs if g.name.endswith("homograph"))
    per_modality_graphs = sum(
        SCIPY_ENTRY * nnz for values in per_modality_nnz.values() for nnz in values
    )
    baseline = IMPORT_BASELINE
    gram_kept = gram_bytes if use_gram else 0
    # graph building runs in steps (rearm.graphs.build): co-occurrence first, then the user
    # interest tables and the kNN graphs (which touch the feature tables), then the combining
    # and the conversion to torch; its peak is the largest step
    building_steps = {
        "co-occurrence": {
            "interpreter and libraries": baseline,
            "interactions": interactions,
            "graphs built so far": scipy_graphs,
            "co-occurrence product block and top-k triples": cooccurrence,
        },
        "kNN graphs": {
            "interpreter and libraries": baseline,
            "interactions": interactions,
            "data_features": data_features,
            "user_interest_features": interest,
            "graphs built so far": scipy_graphs,
            "item Gram matrix": gram_kept,
            "kNN similarity block and lists": semantic,
        },
        "combining and converting to torch": {
            "interpreter and libraries": baseline,
            "interactions": interactions,
            "data_features": data_features,
            "user_interest_features": interest,
            "item Gram matrix": gram_kept,
            "graphs built so far": scipy_graphs + per_modality_graphs,
            "homograph sums": 2 * homographs,
            "torch copies of every graph": sum(g.bytes for g in graphs),
        },
    }
    building = max(building_steps, key=lambda step: sum(building_steps[step].values()))
    loaded = {
        "interpreter and libraries": baseline,
        "interactions": interactions,
        "data_features": data_features,
    }
    trained = {  # resident through training and validation
        **loaded,
        "graphs_kept_for_training": kept_graphs,
        "model_feature_tables": tables,
        "id_embeddings and other parameters": 4 * (ids + small),
        "gradients": 4 * trainable,
        "adamw_state": 8 * trainable,
    }
    first_epoch = {**trained, "activations_one_step": activations}
    phases = {
        f"graph building ({building})": building_steps[building],
        "model construction": {
            **loaded,
            "user_interest_features": interest,
            "every graph (torch)": sum(g.bytes for g in graphs) + kept_graphs // 2,
            "model_feature_tables": tables,
            "id_embeddings": 4 * ids,
        },
        "training, first epoch": first_epoch,
        "training, later epochs": {
            **first_epoch,
            "best_state_copy (kept from the first validation on)": 4 * parameters,
        },
        "validation": {
            **trained,
            "best_state_copy (kept from the first validation on)": 4 * parameters,
            "evaluation_block": evaluation,
        },
    }
    steps = max(1, math.ceil(T / batch))
    if int(t["max_steps_per_epoch"]) > 0:
        steps = min(steps, int(t["max_steps_per_epoch"]))
    plan_ = Plan(
        source=shape.source,
        model=model,
        settings={
            "embedding_dim": d,
            "num_layers": int(h["num_layers"]),
            "user_homograph_layers": int(h["user_homograph_layers"]),
            "item_homograph_layers": int(h["item_homograph_layers"]),
            "rank": r,
            "user_knn_k": user_k,
            "item_knn_k": item_k,
            "train_feature_tables": bool(h["train_feature_tables"]),
            "batch_size": batch,
            "user_interest_method": "gram" if use_gram else "direct",
        },
        shape={
            "users": U,
            "items": I,
            "train_interactions": T,
            "modalities": dict(shape.modalities),
        },
        graphs=graphs,
        components=components,
        phases=phases,
        trainable_parameters=int(trainable),
        parameters=int(parameters),
        steps_per_epoch=steps,
        activations={
            "saved_by_autograd": round(4 * saved),
            "of which meta_network": round(4 * meta_floats),
            "batch": 4 * batch_floats,
            "in_flight": 4 * transient,
        },
        disk={
            # model and AdamW state, and the best state once an epoch was validated; an atomic
            # write holds the old file and the new one for a moment
            "resume_state": 4 * parameters + 8 * trainable + 4 * parameters,
            "model_bundle": 4 * parameters + 4 * (U + I) * (len(shape.modalities) + 1) * d,
        },
    )
    if calibration is not None:
        plan_.epoch = _epoch_estimate(shape, h, by_name, trainable, steps, batch, calibration)
    return plan_


class _ShapeView:
    """Just enough of a Dataset for REARM.graph_arguments (it reads the modality names)."""

    def __init__(self, shape: DataShape) -> None:
        self.features = dict.fromkeys(shape.modalities)
        self.source = shape.source


# ---- time ----------------------------------------------------------------------------------
def _epoch_estimate(shape, h, graphs, trainable, steps, batch, calibration) -> dict:
    """Seconds per epoch = steps x (dense flops x s/flop + graph nnz x width x s/(nnz col)
    + node x width elementwise work x s/element + trainable parameters x s/parameter + a
    per-step cost). A sparse product whose dense operand fits in the last-level cache runs
    several times faster per entry than one that streams from memory, so each graph's rate is
    read off the calibration's ladder at the size of its own operand (`sparse_rate`)."""
    U, I = shape.num_users, shape.num_items  # noqa: E741
    M, d, r = len(shape.modalities), int(h["embedding_dim"]), int(h["rank"])
    W = (M + 1) * d
    widths = list(shape.modalities.values())
    products = 3 if h["train_feature_tables"] else 2  # forward, weight gradient, table gradient
    dense = sum(2 * (U + I) * width * d * products for width in widths)
    if not h["no_meta"]:
        dense += 3 * 2 * (U + I) * (M * d * d + 2 * (d * d * r + (d * r) ** 2))
    # one product per layer forward and one (with the transpose) backward, each graph at the
    # rate of its own dense operand [columns, W]
    sparse_s = 0.0
    for name, layers in (
        ("bipartite", h["num_layers"]),
        ("user_homograph", h["user_homograph_layers"]),
        ("item_homograph", h["item_homograph_layers"]),
    ):
        graph = graphs.get(name)
        if graph is None or not int(layers):
            continue
        rate = sparse_rate(calibration, 4 * graph.shape[1] * W)
        sparse_s += 2 * int(layers) * graph.nnz * W * rate
    node_columns = (U + I) * W
    scale = batch / CALIBRATION_BATCH
    parts = {
        "dense products (feature tables, meta-network)": dense * calibration["dense_s_per_flop"],
        "sparse graph propagation": sparse_s,
        "elementwise passes (attention, norms, activations, losses)": node_columns
        * calibration["elementwise_s_per_node_column"],
        "AdamW": trainable * calibration["adamw_s_per_parameter"],
        "per-batch work (sampling, batch losses, gathers)": calibration["batch_s_per_step"] * scale,
    }
    step = sum(parts.values())
    return {
        "seconds_per_epoch": round(step * steps, 1),
        "seconds_per_step": round(step, 4),
        "parts_s_per_epoch": {name: round(value * steps, 1) for name, value in parts.items()},
        "calibration": dict(calibration),
        "model": (
            "per step: dense flops x s/flop + sparse graph nnz x width x s/(entry x column) "
            "(forward and backward; the rate at the size of the product's dense operand) + "
            "(users + items) x width x s/(node x column) for the elementwise work and a "
            "per-step cost, both timed on real REARM steps of small synthetic sets + trainable "
            "parameters x s/parameter (fused AdamW)"
        ),
    }


def sparse_rate(calibration: Mapping[str, Any], size: float) -> float:
    """Seconds per entry x column of a sparse product whose dense operand has `size` bytes:
    log-log interpolation on the calibration's `sparse_ladder` ([[bytes, seconds], ...]), the
    end rungs beyond it. A calibration without a ladder has one rate for every size
    (`sparse_s_per_entry_column`)."""
    ladder = calibration.get("sparse_ladder")
    if not ladder:
        return calibration["sparse_s_per_entry_column"]
    sizes = np.log([float(rung[0]) for rung in ladder])
    rates = np.log([float(rung[1]) for rung in ladder])
    return float(np.exp(np.interp(math.log(max(size, 1.0)), sizes, rates)))


def calibrate(*, repeats: int = 3) -> dict[str, Any]:
    """Seconds per unit of each kind of work in a REARM step, timed on this machine (best of
    `repeats`; 17-20 s wall on a quiet 2-core machine):

    - a dense [n, D] @ [D, 64] product (s per flop) and fused AdamW (s per parameter);
    - a random sparse CSR product at each size of CALIBRATION_LADDER_BYTES (`sparse_ladder`,
      s per entry x column): the cost per entry grows several times between a cache-resident
      dense operand and one that streams from memory, and a plan reads it at its own sizes;
    - two real REARM steps on small synthetic sets 8x apart in nodes, whose time beyond the
      dense, sparse and AdamW parts is split into a per node x column cost
      (`elementwise_s_per_node_column`) and a per-step cost (the batch's losses and gathers).

    Timings taken on a busy machine are that machine's: re-run on a quiet one to plan for it."""
    import torch

    from rearm.data.synth import make_synthetic
    from rearm.graphs.sparse import to_torch
    from rearm.models import get_model
    from rearm.models.kernels import csr_dense_mm
    from rearm.training.trainer import make_optimizer

    def best(function) -> float:
        """The fastest of `repeats` samples, each the mean of enough calls to take 50 ms (a
        single call of a few milliseconds is mostly noise on a shared machine)."""
        started = time.perf_counter()
        function()
        calls = max(1, min(10_000, int(0.05 / max(time.perf_counter() - started, 1e-6))))
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(calls):
                function()
            times.append((time.perf_counter() - started) / calls)
        return min(times)

    # glibc serves a block above its mmap threshold (128 KB at start) with fresh pages, and
    # raises the threshold to the size of such a block when it is freed (up to 32 MB). A
    # training process does that within its first step; a fresh `rearm plan` has not, and its
    # first timings ran 1.5x slow (dense products 1.1e-11 s per flop before one 30 MB block
    # was freed, 7.7e-12 after). Free one now, so the calibration times the steady state.
    torch.empty(30 << 20, dtype=torch.uint8).fill_(0)

    generator = torch.Generator().manual_seed(0)
    n, width, dim = 16384, 512, 64
    table = torch.randn(n, width, generator=generator)
    weight = torch.randn(dim, width, generator=generator)
    dense_s = best(lambda: table @ weight.t()) / (2 * n * width * dim)

    parameter = torch.nn.Parameter(torch.randn(4_000_000, generator=generator))
    parameter.grad = torch.randn_like(parameter)
    optimizer = make_optimizer([parameter], 1e-3, 0.0)
    adam_s = best(optimizer.step) / parameter.numel()
    del parameter, optimizer

    sparse_ladder = []
    rng = np.random.default_rng(0)
    per_row, columns = 20, 192
    for size in CALIBRATION_LADDER_BYTES:
        nodes = max(size // (4 * columns), 1)
        rows = np.repeat(np.arange(nodes), per_row)
        values = rng.random(rows.size, dtype=np.float32)
        picked = rng.integers(0, nodes, rows.size)
        graph = to_torch(sp.csr_matrix((values, (rows, picked)), shape=(nodes, nodes)))
        x = torch.randn(nodes, columns, generator=generator)
        entries = graph.values().numel() * columns
        sparse_ladder.append([size, best(lambda g=graph, x=x: csr_dense_mm(g, x)) / entries])
        del graph, x

    partial: dict[str, Any] = {
        "dense_s_per_flop": dense_s,
        "sparse_s_per_entry_column": sparse_ladder[-1][1],
        "adamw_s_per_parameter": adam_s,
        "elementwise_s_per_node_column": 0.0,
        "batch_s_per_step": 0.0,
        "sparse_ladder": sparse_ladder,
    }
    # Two real REARM steps, 8x apart in nodes: what their dense, sparse and AdamW parts do not
    # explain is split into a per node x column cost and a per-step (batch) cost.
    remainders, sizes = [], []
    for users, items in CALIBRATION_SETS:
        dataset = make_synthetic(users, items, {"image": 128, "text": 64}, seed=0)
        keys = {"user_knn_k": 10, "item_knn_k": 10}
        model = get_model("rearm").from_dataset(dataset, **keys)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(trainable, 1e-4, 0.0)
        batch_users = torch.randint(0, users, (CALIBRATION_BATCH,), generator=generator)
        batch_items = torch.randint(0, items, (2, CALIBRATION_BATCH), generator=generator)

        def step(model=model, optimizer=optimizer, users=batch_users, items=batch_items):
            optimizer.zero_grad(set_to_none=False)
            sum(model.loss(users, items[0], items[1]).values()).backward()
            optimizer.step()

        step_s = best(step)
        shape = data_shape(dataset)
        small = plan(shape, keys, {"batch_size": CALIBRATION_BATCH})
        explained = _epoch_estimate(
            shape,
            model.validate_hyperparameters(keys),
            {g.name: g for g in small.graphs},
            small.trainable_parameters,
            1,
            CALIBRATION_BATCH,
            partial,
        )["seconds_per_step"]
        remainders.append(max(step_s - explained, 0.0))
        sizes.append((users + items) * (len(dataset.features) + 1) * model.dim)
    per_node = max((remainders[1] - remainders[0]) / (sizes[1] - sizes[0]), 0.0)
    partial["elementwise_s_per_node_column"] = per_node
    partial["batch_s_per_step"] = max(remainders[0] - per_node * sizes[0], 0.0)
    partial["threads"] = torch.get_num_threads()
    result = {
        name: float(f"{value:.4g}") for name, value in partial.items() if name != "sparse_ladder"
    }
    result["sparse_ladder"] = [[size, float(f"{rate:.4g}")] for size, rate in sparse_ladder]
    return result


# ---- the memory check of `rearm train` -------------------------------------------------------
def available_memory() -> int | None:
    """Bytes of memory available for a new run: REARM_MEMORY_LIMIT (bytes, or with a K/M/G
    suffix) if set, else MemAvailable of /proc/meminfo (Linux); None where neither is known."""
    limit = os.environ.get(MEMORY_CHECK_VARIABLE)
    if limit:
        return parse_size(limit, MEMORY_CHECK_VARIABLE)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_size(text: str, label: str) -> int:
    """'8G', '512M', '1048576' -> bytes (ConfigError otherwise)."""
    value = str(text).strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(value[-1:], 1)
    number = value[:-1] if scale != 1 else value
    try:
        size = float(number)
    except ValueError:
        raise ConfigError(
            f"{label}: expected a size like 8G, 512M or bytes, got {text!r}"
        ) from None
    if not math.isfinite(size) or size <= 0:
        raise ConfigError(f"{label}: must be a positive size, got {text!r}")
    return int(size * scale)


def plan_for_dataset(config, dataset, *, calibration=None) -> Plan:
    """The plan of a resolved RunConfig on a loaded data set."""
    return plan(
        data_shape(dataset),
        config.hyperparameters,
        config.training,
        model=config.model,
        calibration=calibration,
    )


def memory_refusal(config, dataset) -> str | None:
    """The message `rearm train` refuses with when the planned peak of `config` on `dataset`
    exceeds the available memory; None when it fits, when the model is not planned or when the
    available memory is unknown. Cheap: no graph is built and nothing is timed."""
    if config.model not in PLANNED_MODELS or not dataset.features:
        return None
    available = available_memory()
    if available is None:
        return None
    source = f"{config.model} on {dataset.source or 'the data set'}"
    return plan_for_dataset(config, dataset).check_memory(
        available, what=source, epochs=config.training["epochs"]
    )


def format_plan(result: Plan) -> str:
    """The human-readable plan that `rearm plan` prints."""
    shape = result.shape
    modalities = ", ".join(f"{m} {w}-d" for m, w in shape["modalities"].items())
    lines = [
        f"plan: {result.model} on {result.source}",
        f"  {shape['users']:,} users x {shape['items']:,} items, "
        f"{shape['train_interactions']:,} train interactions; {modalities}",
        "  settings: " + ", ".join(f"{key}={value}" for key, value in result.settings.items()),
        "graphs (float32 torch CSR, int64 indices):",
    ]
    for graph in result.graphs:
        size = " x ".join(f"{n:,}" for n in graph.shape)
        mark = "<=" if graph.bound else "= "
        lines.append(
            f"  {graph.name:<22} {size:>22}  nnz {mark}{graph.nnz:>14,}  {_mb(graph.bytes):>10}"
        )
    lines.append(
        f"parameters: {result.parameters:,} ({result.trainable_parameters:,} trainable; "
        f"AdamW keeps 2 x {result.trainable_parameters:,})"
    )
    lines.append(
        "activations of one step: "
        + ", ".join(f"{name} {_mb(size)}" for name, size in result.activations.items())
    )
    lines.append("memory by component:")
    for name, size in result.components.items():
        lines.append(f"  {name:<34} {_mb(size):>10}")
    for phase, parts in result.phases.items():
        marker = "  <- peak" if phase == result.peak_phase else ""
        lines.append(f"peak of {phase}: {_gb(result.phase_bytes(phase))}{marker}")
        for name, size in sorted(parts.items(), key=lambda item: -item[1]):
            lines.append(f"  {name:<52} {_mb(size):>10}")
    if result.disk:
        lines.append(
            f"disk: resume.pt about {_gb(result.disk['resume_state'])} (twice that while it is "
            f"replaced), model/ about {_gb(result.disk['model_bundle'])}"
        )
    if result.epoch is not None:
        epoch = result.epoch
        lines.append(
            f"time: about {epoch['seconds_per_epoch']:,.0f} s per epoch on this machine "
            f"({result.steps_per_epoch:,} steps of {result.settings['batch_size']:,}, "
            f"{epoch['seconds_per_step']:.3g} s per step)"
        )
        for name, seconds in epoch["parts_s_per_epoch"].items():
            lines.append(f"  {name:<60} {seconds:>10,.1f} s")
        lines.append(f"  model: {epoch['model']}")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def _mb(size: int) -> str:
    return f"{size / (1 << 20):,.0f} MB"
