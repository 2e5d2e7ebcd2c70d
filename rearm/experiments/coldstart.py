"""New items without retraining (`add_items`) and the two cold-start protocols
(`cold_users_protocol`, `cold_items_protocol`).

New users are folded in from the saved item table alone (`Bundle.fold_in`,
rearm.experiments.fold_in). New items go through the model's feature path: the run's model is
rebuilt from its training data and its saved weights (weights.pt, loaded with
`torch.load(weights_only=True)`), checked to reproduce the saved item table, and asked for
`cold_item_representation(features, ...)` of the new items (REARM, FREEDOM, VBPR; models
without features refuse with ColdStartError).

Format of a folder of new items (`rearm add-items RUN --features DIR`):
  item_ids.txt          one new item id per line (n lines, unique, none already in the run)
  <modality>_feat.npy   float [n, D_m] per modality of the run (same names and widths as the
                        training data's `<modality>_feat.npy`), row r = line r of item_ids.txt
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import scipy.sparse as sp
import torch

from rearm.arrays import sorted_difference
from rearm.data.dataset import Dataset
from rearm.errors import ColdStartError, DataError, RunError
from rearm.experiments.bundle import BUNDLE_DIR, Bundle, load_bundle
from rearm.experiments.fold_in import (
    FOLD_IN_METHODS,
    FOLD_IN_VARIANTS,
    fold_in_users,
    item_gram,
    shared_inverse,
    variant_name,
)
from rearm.io import atomic_open, file_sha256, staged_folder, write_json
from rearm.models.base import Range

ITEM_IDS_FILE = "item_ids.txt"
REPORTED = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "num_users")

Fraction = Annotated[float, Range(gt=0, lt=1), "share of users / items held out"]
DEFAULT_FRACTION: Fraction = 0.1


# ------------------------------------------------------------------------------------------
# the run's model, rebuilt


def load_run_dataset(run_dir: str | os.PathLike, config: dict, data: str | None = None) -> Dataset:
    """The data a run was trained on: `data`, else the path its configuration records (the
    synthetic default when none), checked against the fingerprint in RUN/protocol.json."""
    from rearm.experiments.run import load_run_data

    path = data if data is not None else config.get("data")
    try:
        dataset = load_run_data(path)
    except DataError as error:
        raise ColdStartError(
            f"{run_dir}: cannot read the run's training data ({error}); give --data PATH"
        ) from None
    record = Path(run_dir) / "protocol.json"
    try:
        expected = json.loads(record.read_text())["data"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ColdStartError(f"{record}: missing or damaged (it names the run's data)") from None
    if dataset.fingerprint() != expected:
        raise ColdStartError(
            f"{path or 'the synthetic default'}: not the data {run_dir} was trained on "
            "(its fingerprint differs from protocol.json's)"
        )
    return dataset


def rebuild_model(bundle_folder: Path, config: dict, dataset: Dataset, progress=None):
    """The run's model built on `dataset` (graphs from the cache when present) with the saved
    weights; ColdStartError when they do not fit."""
    from rearm.data.cache import GraphCache
    from rearm.models import get_model

    model = get_model(config["model"]).from_dataset(
        dataset,
        graph_cache=GraphCache(report=progress),
        seed=config["seed"],
        progress=progress,
        **config["hyperparameters"],
    )
    weights = bundle_folder / "weights.pt"
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ColdStartError(f"{weights}: cannot load the model's weights ({first})") from None
    return model.eval()


COLD_ITEM_METHODS = ("neighbours", "features")
DEFAULT_COLD_ITEM_METHOD = "neighbours"
ADD_ITEMS_METHODS = ("auto", *COLD_ITEM_METHODS)  # auto: `choose_cold_item_method`
CHOICE_SAMPLE = 1000  # at most this many known items are made cold to choose a method
DEFAULT_NEIGHBOURS = 10
NEIGHBOUR_VARIANTS = (3, 10, 30)  # what the cold-items protocol compares


def feature_path_table(
    model, features: dict[str, np.ndarray], dataset: Dataset, config: dict
) -> np.ndarray:
    """float32 [n, D]: the model's own feature path for new items with `features`
    (`cold_item_representation`: no ID embedding, no interaction)."""
    with torch.no_grad():
        table = model.cold_item_representation(
            features, dataset.features, config["hyperparameters"]
        )
    return table.detach().float().cpu().numpy()


def unit_rows(table) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (all-zero rows stay zero)."""
    table = np.asarray(table, dtype=np.float32)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    return table / np.where(norms > 0, norms, 1.0)


def check_neighbours(k) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ColdStartError(f"--neighbours must be a positive integer, got {k!r}")


def feature_neighbours(
    new: dict[str, np.ndarray],
    known: dict[str, np.ndarray],
    k: int = DEFAULT_NEIGHBOURS,
    *,
    block_size: int = 1024,
) -> sp.csr_matrix:
    """Row-stochastic CSR [n, I]: each new item's k known items most similar by feature cosine
    (the mean over modalities of the per-modality cosines; ties by index), weighted by that
    cosine clipped at 0 (equally when none is positive)."""
    check_neighbours(k)
    names = list(known)
    queries = {m: unit_rows(new[m]) for m in names}
    tables = {m: unit_rows(known[m]) for m in names}
    n, num_known = len(queries[names[0]]), len(tables[names[0]])
    k = min(k, num_known)
    rows, cols, values = [], [], []
    for start in range(0, n, block_size):
        sims = sum(queries[m][start : start + block_size] @ tables[m].T for m in names)
        sims /= len(names)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        weight = np.clip(np.take_along_axis(sims, order, axis=1), 0, None)
        total = weight.sum(axis=1, keepdims=True)
        weight = np.where(total > 0, weight / np.where(total > 0, total, 1), 1.0 / k)
        rows.append(np.repeat(np.arange(start, start + len(sims)), k))
        cols.append(order.ravel())
        values.append(weight.ravel())
    if not rows:
        return sp.csr_matrix((n, num_known), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, num_known),
    )


def neighbour_rows(
    features: dict[str, np.ndarray],
    known_features: dict[str, np.ndarray],
    item_table: np.ndarray,
    k: int = DEFAULT_NEIGHBOURS,
) -> np.ndarray:
    """float32 [n, D]: new items represented by the trained rows of their k most
    feature-similar known items (`feature_neighbours`, weights w): the direction of
    sum_j w_j V_j with the length sum_j w_j |V_j|. A plain weighted mean would be shorter than
    the rows it averages (they point in different directions), and a new item would then score
    below every trained one; the length keeps it on the trained items' scale."""
    mix = feature_neighbours(features, known_features, k)
    direction = np.asarray(mix @ item_table, dtype=np.float32)
    length = np.asarray(mix @ np.linalg.norm(item_table, axis=1), dtype=np.float32)
    norms = np.linalg.norm(direction, axis=1)
    scale = np.where(norms > 0, length / np.where(norms > 0, norms, 1.0), 0.0)
    return (direction * scale[:, None]).astype(np.float32)


def cold_item_table(
    model,
    features: dict[str, np.ndarray],
    dataset: Dataset,
    config: dict,
    item_table: np.ndarray,
    method: str = DEFAULT_COLD_ITEM_METHOD,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> np.ndarray:
    """float32 [n, D]: representations of new items with `features` next to the trained
    `item_table` [I, D] of the items of `dataset`.

    - neighbours (default): `neighbour_rows`, from the trained item table and the items'
      features alone (no model needed, so it also serves models without a feature path);
    - features: the model's own feature path (`feature_path_table`). It orders new items among
      themselves, but lacks every interaction-learnt part (ID embedding, user-item
      propagation), so its scores fall below the trained items' (README "Cold start")."""
    if method not in COLD_ITEM_METHODS:
        raise ColdStartError(
            f"unknown cold-item method {method!r} (choose from {', '.join(COLD_ITEM_METHODS)})"
        )
    if method == "features":
        return feature_path_table(model, features, dataset, config)
    return neighbour_rows(features, dataset.features, item_table, neighbours)


def cold_item_variants(feature_free: bool) -> list[tuple[str, str, int]]:
    """(label, method, neighbours) of every representation compared (`features` only for
    models with a feature path; `neighbours` at each of NEIGHBOUR_VARIANTS)."""
    variants = [] if feature_free else [("features", "features", 0)]
    return variants + [(f"neighbours(k={k})", "neighbours", k) for k in NEIGHBOUR_VARIANTS]


def choose_cold_item_method(
    model,
    user_table: np.ndarray,
    item_table: np.ndarray,
    dataset: Dataset,
    config: dict,
    *,
    sample: int = CHOICE_SAMPLE,
    seed: int = 0,
) -> dict:
    """Choose how to represent new items for a trained model from its own data: make up to
    `sample` known items (a seeded draw of 10% of those with train and valid interactions)
    cold, that is represent each with every `cold_item_variants` entry from its features while
    hiding its own features from every neighbour search (so no variant sees its own trained
    row), put them in the trained `item_table` at once, and keep the variant with the best
    valid Recall@20 on those items' valid interactions (the run's valid mask; on a tie the
    earlier variant). `model` may be None for models without a feature path.

    Only the representations are made cold: the users' vectors were trained with these items,
    so the check ranks variants, it does not predict the cold-items protocol's numbers.
    Returns {"method", "neighbours", "label", "valid_recall_at_20": {label: value}, "items"}."""
    from rearm.evaluation import rank_metrics
    from rearm.evaluation.protocol import get_protocol

    variants = cold_item_variants(model is None or model.feature_free)
    candidates = np.flatnonzero(
        (dataset.train.getnnz(axis=0) > 0) & (dataset.valid.getnnz(axis=0) > 0)
    )
    size = min(sample, max(1, round(0.1 * len(candidates)))) if len(candidates) else 0
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=size, replace=False))
    measured: dict[str, float] = {}
    best = ("neighbours(k=10)", "neighbours", DEFAULT_NEIGHBOURS)  # without valid items
    if size:
        hidden = {}
        for name, table in dataset.features.items():
            hidden[name] = np.array(table, dtype=np.float32)
            hidden[name][chosen] *= -1  # least similar to itself: never its own neighbour
        view = dataclasses.replace(dataset, features=hidden)
        features = {name: np.asarray(table)[chosen] for name, table in dataset.features.items()}
        valid = sp.csr_matrix(dataset.valid @ _columns(chosen, dataset))
        valid.eliminate_zeros()
        users = np.flatnonzero(valid.getnnz(axis=1) > 0)
        mask = get_protocol(config["protocol"]).mask_matrix(dataset, "valid")[users]
        items = np.array(item_table, dtype=np.float32)
        for label, method, k in variants:
            items[chosen] = cold_item_table(
                model, features, view, config, item_table, method, k or 1
            )
            measured[label] = rank_metrics(
                user_table[users] @ items.T, valid[users], exclude=mask, ks=(20,)
            )["Recall@20"]
        label = max(measured, key=lambda name: (measured[name], -list(measured).index(name)))
        best = next(variant for variant in variants if variant[0] == label)
    return {
        "method": best[1],
        "neighbours": best[2] or None,
        "label": best[0],
        "valid_recall_at_20": measured,
        "items": int(size),
    }


def check_reproduces(model, bundle: Bundle, where: str) -> None:
    """The rebuilt model must give the saved item table (same weights, same graphs)."""
    with torch.no_grad():
        _, items = model.embed()
    items = items.detach().float().cpu().numpy()
    scale = float(np.abs(bundle.item_repr).max()) or 1.0
    if items.shape != bundle.item_repr.shape or (
        float(np.abs(items - bundle.item_repr).max()) > 1e-3 * scale
    ):
        raise ColdStartError(
            f"{where}: the model rebuilt from the data and weights.pt does not reproduce the "
            "saved item table (different data or graphs?)"
        )


# ------------------------------------------------------------------------------------------
# add-items


def read_new_items(
    folder: str | os.PathLike, modalities: list[str], known_ids: set[str]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Read and validate a folder of new items (module docstring); DataError naming the file.
    Widths are checked against the training data by `check_widths`."""
    from rearm.data.dataset import check_features

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--features {folder}: folder not found")
    ids_path = folder / ITEM_IDS_FILE
    try:
        lines = ids_path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{ids_path}: missing (one new item id per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{ids_path}: cannot read ({error})") from None
    ids = [line.strip() for line in lines]
    if not ids:
        raise DataError(f"{ids_path}: no item ids")
    blank = [n for n, x in enumerate(ids, 1) if not x]
    if blank:
        raise DataError(f"{ids_path}: line {blank[0]} is empty")
    seen: set[str] = set()
    for number, item in enumerate(ids, 1):
        if item in seen:
            raise DataError(f"{ids_path}: line {number}: item id {item!r} is repeated")
        if item in known_ids:
            raise DataError(f"{ids_path}: line {number}: item id {item!r} is already in the run")
        seen.add(item)
    present = {p.name[: -len("_feat.npy")] for p in folder.glob("*_feat.npy")}
    extra = sorted(present - set(modalities))
    if extra:
        raise DataError(
            f"{folder / (extra[0] + '_feat.npy')}: modality {extra[0]!r} is not one of the "
            f"run's ({', '.join(modalities)})"
        )
    features = {}
    for name in modalities:
        path = folder / f"{name}_feat.npy"
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: missing (the run has modality {name!r})") from None
        except (OSError, ValueError, EOFError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{path}: not a readable .npy array ({first})") from None
        features[name] = check_features(array, name, len(ids), str(path))
    return ids, features


def check_widths(
    folder: str | os.PathLike, features: dict[str, np.ndarray], known: dict[str, np.ndarray]
) -> None:
    for name, table in features.items():
        width = np.asarray(known[name]).shape[1]
        if table.shape[1] != width:
            raise DataError(
                f"{Path(folder) / (name + '_feat.npy')}: modality {name!r} is "
                f"{table.shape[1]}-d, the run's is {width}-d"
            )


def add_items(
    run_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    method: str = "auto",
    neighbours: int | None = None,
    force: bool = False,
    progress=None,
) -> dict:
    """Write OUT, a complete run whose bundle also holds the items of `features_dir`
    (module docstring) represented by `method` (`cold_item_table`); returns the
    `added_items` record also written to OUT/model/bundle.json. Built in a hidden sibling and
    renamed into place, so OUT never holds half a run."""
    from rearm.experiments.status import read_status, require_model, write_status
    from rearm.models import get_model

    say = progress or (lambda text: None)
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise RunError(f"--out {out}: must differ from the run it extends")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force or not out.is_dir() or read_status(out) is None:
            raise RunError(
                f"--out {out}: exists and is not empty"
                + ("" if force else " (use --force to replace a run there)")
            )
    require_model(run_dir)
    bundle = load_bundle(run_dir)
    config = bundle.meta["config"]
    if bundle.meta.get("added_items"):
        raise ColdStartError(
            f"{run_dir}: already extends another run with added items; add all new items to "
            f"the original run ({bundle.meta['added_items'].get('from_run')}) at once"
        )
    if method not in ADD_ITEMS_METHODS:
        raise ColdStartError(
            f"--method {method!r}: not a cold-item method (choose from "
            f"{', '.join(ADD_ITEMS_METHODS)})"
        )
    feature_free = get_model(config["model"]).feature_free
    if method == "features" and feature_free:
        raise ColdStartError(
            f"{config['model']} has no item features: it cannot represent an item without "
            "interactions through its own path (use --method neighbours, or a model with a "
            "feature path, e.g. rearm, vbpr or freedom)"
        )
    if neighbours is not None and method != "neighbours":
        raise ColdStartError(
            f"--neighbours sets k for --method neighbours (--method {method} "
            + ("chooses k itself)" if method == "auto" else "uses no neighbours)")
        )
    neighbours = DEFAULT_NEIGHBOURS if neighbours is None else neighbours
    check_neighbours(neighbours)
    if not bundle.meta.get("modalities"):
        raise ColdStartError(
            f"{run_dir}: its training data has no item features, so a new item cannot be "
            "represented"
        )
    started = time.perf_counter()
    item_ids = (
        list(bundle.item_ids) if bundle.item_ids else [str(i) for i in range(bundle.num_items)]
    )
    ids, features = read_new_items(features_dir, list(bundle.meta["modalities"]), set(item_ids))
    say(f"loading the training data of {run_dir}")
    dataset = load_run_dataset(run_dir, config, data)
    check_widths(features_dir, features, dataset.features)
    model = None
    if method == "features" or (method == "auto" and not feature_free):
        say(f"rebuilding {config['model']} from weights.pt for {len(ids)} new items")
        model = rebuild_model(Path(run_dir) / BUNDLE_DIR, config, dataset, progress)
        check_reproduces(model, bundle, str(run_dir))
    choice = None
    if method == "auto":
        choice = choose_cold_item_method(model, bundle.user_repr, bundle.item_repr, dataset, config)
        method, neighbours = choice["method"], choice["neighbours"] or DEFAULT_NEIGHBOURS
        say(
            f"chose {choice['label']} on {choice['items']} known items made cold (valid "
            "Recall@20: "
            + ", ".join(f"{k} {v:.4f}" for k, v in choice["valid_recall_at_20"].items())
            + ")"
        )
    new_table = cold_item_table(
        model, features, dataset, config, bundle.item_repr, method, neighbours
    )
    record = {
        "count": len(ids),
        "first_ids": ids[:5],
        "first_index": bundle.num_items,
        "from_run": str(run_dir),
        "features": {
            path.name: file_sha256(path)
            for path in sorted(Path(features_dir).iterdir())
            if path.name == ITEM_IDS_FILE or path.name.endswith("_feat.npy")
        },
        "method": method,
        "neighbours": neighbours if method != "features" else None,
        "choice": choice,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

    def replaceable(path: Path) -> bool:
        return force and read_status(path) is not None

    source = Path(run_dir)
    try:
        with staged_folder(out, replace=replaceable) as stage:
            for name in ("config.yaml", "protocol.json", "results.json", "metrics.jsonl"):
                if (source / name).is_file():
                    shutil.copy2(source / name, stage / name)
            folder = stage / BUNDLE_DIR
            folder.mkdir()
            with atomic_open(folder / "embeddings.npz", "wb") as handle:
                np.savez(
                    handle,
                    user=bundle.user_repr,
                    item=np.concatenate([bundle.item_repr, new_table]).astype(np.float32),
                )
            for name in ("interactions.npz", "weights.pt"):
                shutil.copy2(source / BUNDLE_DIR / name, folder / name)
            write_json(
                folder / "ids.json",
                {"users": bundle.user_ids, "items": item_ids + ids},
                indent=None,
            )
            meta = dict(bundle.meta)
            meta["num_items"] = bundle.num_items + len(ids)
            meta["added_items"] = record
            meta["files"] = {name: file_sha256(folder / name) for name in meta["files"]}
            write_json(folder / "bundle.json", meta)
            write_status(stage, "complete", note=f"{len(ids)} items added to {run_dir}")
    except OSError as error:
        raise RunError(f"--out {out}: cannot write ({error.strerror or error})") from None
    say(
        f"wrote {out}: {bundle.num_items} + {len(ids)} items in {time.perf_counter() - started:.1f}s"
    )
    return record


# ------------------------------------------------------------------------------------------
# protocols


def subset_users(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """The data set restricted to the users `keep` (ascending indices), items unchanged."""
    return Dataset(
        num_users=len(keep),
        num_items=dataset.num_items,
        train=dataset.train[keep],
        valid=dataset.valid[keep],
        test=dataset.test[keep],
        features=dataset.features,
        user_ids=None if dataset.user_ids is None else np.asarray(dataset.user_ids)[keep],
        item_ids=dataset.item_ids,
        format=dataset.format,
        source=dataset.source,
        files=dict(dataset.files),
    )


def subset_items(dataset: Dataset, keep: np.ndarray) -> Dataset:
    """The data set restricted to the items `keep` (ascending indices): every interaction with
    another item is dropped from every split; users unchanged."""
    return Dataset(
        num_users=dataset.num_users,
        num_items=len(keep),
        train=sp.csr_matrix(dataset.train[:, keep]),
        valid=sp.csr_matrix(dataset.valid[:, keep]),
        test=sp.csr_matrix(dataset.test[:, keep]),
        features={name: np.asarray(table)[keep] for name, table in dataset.features.items()},
        user_ids=dataset.user_ids,
        item_ids=None if dataset.item_ids is None else np.asarray(dataset.item_ids)[keep],
        format=dataset.format,
        source=dataset.source,
        files=dict(dataset.files),
    )


def _draw(candidates: np.ndarray, fraction: float, seed: int, what: str) -> np.ndarray:
    count = int(round(fraction * len(candidates)))
    if count < 1 or count >= len(candidates):
        raise ColdStartError(
            f"--fraction {fraction}: holds out {count} of {len(candidates)} {what}; "
            "need at least one held out and one kept"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=count, replace=False))


def _metrics(scores, heldout, exclude, ks) -> dict:
    result = _rank(scores, heldout, exclude, ks)
    return {k: result[k] for k in REPORTED if k in result}


def _rank(scores, heldout, exclude, ks) -> dict:
    from rearm.evaluation import rank_metrics

    return rank_metrics(np.asarray(scores, dtype=np.float32), heldout, exclude=exclude, ks=ks)


def _prepare_out(out: Path, force: bool, reuse: bool = False) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    if (out / "results.json").exists() and not (force or reuse):
        raise RunError(f"--out {out}: already holds cold-start results (use --force)")
    if out.is_dir() and any(out.iterdir()) and not (out / "results.json").exists() and not force:
        if not any((out / name).is_dir() for name in ("run", "warm_run")):
            raise RunError(f"--out {out}: directory is not empty and holds no cold-start study")


def _train_or_reuse(config, folder: Path, dataset: Dataset, reuse: bool, force: bool, progress):
    """train_run, or with `reuse` the complete run already in `folder` (its results.json)."""
    from rearm.experiments.run import train_run
    from rearm.experiments.status import read_status

    record = read_status(folder) if folder.is_dir() else None
    if reuse and record is not None and record["status"] == "complete":
        results = json.loads((folder / "results.json").read_text())
        if results.get("model") != config.model or results.get("seed") != config.seed:
            raise ColdStartError(f"--reuse: {folder} holds another model or seed")
        progress.line(f"reusing the complete run in {folder}")
        return results
    return train_run(config, folder, force=force, dataset=dataset, progress=progress)


def cold_users_protocol(
    config,
    out: str | os.PathLike,
    *,
    fraction: Fraction = DEFAULT_FRACTION,
    dataset: Dataset | None = None,
    force: bool = False,
    reuse: bool = False,
    progress=None,
) -> dict:
    """Hold out `fraction` of the users that have train and test items (drawn with
    config.seed), train `config` on the others (OUT/run, through `train_run`), fold the held-out
    users in from their train items with each fold-in variant, and report their valid / test
    metrics against the trained users' and item popularity. Writes OUT/results.json."""
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.run import load_run_data
    from rearm.training.trainer import Progress

    progress = progress or Progress()
    out = Path(out)
    _prepare_out(out, force, reuse)
    started = time.perf_counter()
    dataset = dataset if dataset is not None else load_run_data(config.data)
    protocol = get_protocol(config.protocol)
    cold = draw_cold_users(dataset, fraction, config.seed)
    warm = sorted_difference(np.arange(dataset.num_users), cold)
    progress.line(
        f"cold users: {len(cold)} of {dataset.num_users} users held out (seed {config.seed}); "
        f"training {config.model} on the other {len(warm)}"
    )
    results = _train_or_reuse(
        config, out / "run", subset_users(dataset, warm), reuse, force, progress
    )
    record = {
        "protocol": "cold_users",
        "model": config.model,
        "preset": config.preset,
        "data": config.data or "synthetic default",
        "seed": config.seed,
        "fraction": fraction,
        "users": {"total": dataset.num_users, "cold": len(cold), "warm": len(warm)},
        **evaluate_cold_users(out / "run", dataset, cold, protocol, progress),
        "run": str(out / "run"),
        "best_epoch": results["best_epoch"],
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_json(out / "results.json", record)
    chosen, report = record["best_fold_in_by_valid"], record["cold_users"]
    progress.line(
        f"cold users' test Recall@20: {chosen} {report[chosen]['test']['Recall@20']:.4f}, "
        f"popularity {report['popularity']['test']['Recall@20']:.4f}; trained users "
        f"{record['warm_users']['trained']['Recall@20']:.4f} -> {out / 'results.json'}"
    )
    return record


def evaluate_cold_users(
    run_dir: str | os.PathLike, dataset: Dataset, cold: np.ndarray, protocol, progress=None
) -> dict:
    """The cold-users tables of a run trained on every user of `dataset` but `cold`: for the
    held-out users, valid / test metrics of each fold-in variant (`FOLD_IN_VARIANTS`) and of
    popularity among the training users; for the training users, their trained test metrics
    and the same fold-in (fold-in quality without coldness). Reads the run's bundle only."""
    say = progress.line if progress is not None else (lambda text: None)
    bundle = load_bundle(run_dir)
    warm = sorted_difference(np.arange(dataset.num_users), cold)
    if bundle.num_users != len(warm) or bundle.num_items != dataset.num_items:
        raise ColdStartError(f"{run_dir}: was not trained on these {len(warm)} users")
    inverse = shared_inverse(item_gram(bundle.item_repr))
    history = dataset.train[cold]
    masks = {split: protocol.mask_matrix(dataset, split)[cold] for split in ("valid", "test")}
    popularity = np.asarray(dataset.train[warm].sum(axis=0)).ravel()
    report: dict[str, Any] = {"popularity": {}}
    for split in ("valid", "test"):
        scores = np.broadcast_to(popularity, (len(cold), dataset.num_items))
        report["popularity"][split] = _metrics(
            scores, dataset.split(split)[cold], masks[split], protocol.ks
        )
    warm_data = subset_users(dataset, warm)
    warm_mask = protocol.mask_matrix(warm_data, "test")
    trained = bundle.evaluate("test")
    warm_report = {"trained": {k: trained[k] for k in REPORTED if k in trained}}
    timings = {}
    for method, confidence in FOLD_IN_VARIANTS:
        name = variant_name(method, confidence)
        options = {} if confidence is None else {"confidence": confidence, "inverse": inverse}
        begin = time.perf_counter()
        vectors = fold_in_users(bundle.item_repr, history, method, **options)
        timings[name] = round(time.perf_counter() - begin, 4)
        report[name] = {
            split: _metrics(
                vectors @ bundle.item_repr.T, dataset.split(split)[cold], masks[split], protocol.ks
            )
            for split in ("valid", "test")
        }
        say(f"fold-in {name}: cold users' test Recall@20 {report[name]['test']['Recall@20']:.4f}")
        vectors = fold_in_users(bundle.item_repr, warm_data.train, method, **options)
        warm_report[name] = _metrics(
            vectors @ bundle.item_repr.T, warm_data.test, warm_mask, protocol.ks
        )
    variants = [variant_name(m, c) for m, c in FOLD_IN_VARIANTS]
    choice = bundle.fold_in_choice  # what Bundle.fold_in uses, chosen on trained users only
    say(f"Bundle.fold_in chooses {choice['name']} (trained users' valid Recall@20)")
    return {
        "cold_users": report,
        "warm_users": warm_report,
        "best_fold_in_by_valid": max(variants, key=lambda n: report[n]["valid"]["Recall@20"]),
        "bundle_fold_in": choice,
        "fold_in_s": timings,
    }


def draw_cold_users(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """The held-out users of the cold-users protocol (ascending), among the users with train and
    test items; deterministic in `seed`."""
    eligible = np.flatnonzero(
        (dataset.train.getnnz(axis=1) > 0) & (dataset.test.getnnz(axis=1) > 0)
    )
    return _draw(eligible, fraction, seed, "users with train and test items")


def content_knn_scores(
    users: np.ndarray, history: sp.csr_matrix, features: dict[str, np.ndarray]
) -> np.ndarray:
    """Content-only baseline [len(users), I]: per modality, the mean cosine between an item's
    features and the features of the user's `history` items, averaged over modalities."""
    total = None
    rows = history[users]
    counts = np.maximum(rows.getnnz(axis=1), 1)[:, None]
    for table in features.values():
        unit = unit_rows(table)
        profile = (rows @ unit) / counts
        part = profile @ unit.T
        total = part if total is None else total + part
    return total / len(features)


def cold_items_protocol(
    config,
    out: str | os.PathLike,
    *,
    fraction: Fraction = DEFAULT_FRACTION,
    warm: bool = True,
    dataset: Dataset | None = None,
    force: bool = False,
    reuse: bool = False,
    progress=None,
) -> dict:
    """Hide `fraction` of the items with test interactions (drawn with config.seed) from
    training (every interaction with them removed; OUT/run), build their representations from
    their features (`cold_item_variants`), rank them among all items for their test users,
    and report Recall@20 / NDCG@20 on those items' test interactions against a content-only kNN
    baseline and, with `warm`, the same model trained with them (OUT/warm_run). Writes
    OUT/results.json."""
    from rearm.evaluation.protocol import get_protocol
    from rearm.experiments.run import load_run_data
    from rearm.models import get_model
    from rearm.training.trainer import Progress

    progress = progress or Progress()
    out = Path(out)
    get_model(config.model)  # an unknown model fails before anything is written
    started = time.perf_counter()
    dataset = dataset if dataset is not None else load_run_data(config.data)
    if not dataset.features:
        raise ColdStartError(
            f"{config.data or 'the data'}: has no item features, so there is no cold-items "
            "protocol for it (a new item is known by its features)"
        )
    _prepare_out(out, force, reuse)
    protocol = get_protocol(config.protocol)
    cold = draw_cold_items(dataset, fraction, config.seed)
    kept = sorted_difference(np.arange(dataset.num_items), cold)
    progress.line(
        f"cold items: {len(cold)} of {dataset.num_items} items hidden from training "
        f"(seed {config.seed}); training {config.model} on the other {len(kept)}"
    )
    results = _train_or_reuse(
        config, out / "run", subset_items(dataset, kept), reuse, force, progress
    )
    if warm:
        progress.line(f"training {config.model} with the held-out items (warm reference)")
        _train_or_reuse(config, out / "warm_run", dataset, reuse, force, progress)
    record = {
        "protocol": "cold_items",
        "model": config.model,
        "preset": config.preset,
        "data": config.data or "synthetic default",
        "seed": config.seed,
        "fraction": fraction,
        "items": {"total": dataset.num_items, "cold": len(cold), "kept": len(kept)},
        **evaluate_cold_items(
            out / "run",
            dataset,
            cold,
            protocol,
            warm_run=out / "warm_run" if warm else None,
            progress=progress,
        ),
        "kept_items_test": {k: results["test"][k] for k in REPORTED if k in results["test"]},
        "run": str(out / "run"),
        "best_epoch": results["best_epoch"],
        "total_s": round(time.perf_counter() - started, 1),
    }
    write_json(out / "results.json", record)
    progress.line(f"-> {out / 'results.json'}")
    return record


def draw_cold_items(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """The hidden items of the cold-items protocol (ascending), among the items with test
    interactions; deterministic in `seed`."""
    candidates = np.flatnonzero(dataset.test.getnnz(axis=0) > 0)
    return _draw(candidates, fraction, seed, "items with test interactions")


def evaluate_cold_items(
    run_dir: str | os.PathLike,
    dataset: Dataset,
    cold: np.ndarray,
    protocol,
    *,
    warm_run: str | os.PathLike | None = None,
    progress=None,
) -> dict:
    """The cold-items tables of a run trained on every item of `dataset` but `cold` (and,
    given `warm_run`, of a run trained on all of them): the cold items' representations
    (`cold_item_variants`), ranked among all items ("cold_items": test; "cold_items_valid":
    valid, which chooses "best_cold_item_method_by_valid") and among the cold items alone
    ("cold_items_among_themselves": whether the representations order the new items well,
    whatever their scale against the trained ones), for the users with a test (valid)
    interaction with a cold item, against content kNN; "evaluated_users_all_test_items": the
    same users' metrics on all their test items (whether new items are found at the expense of
    the others), and "add_items_choice": what `add-items --method auto` chooses for the run
    (`choose_cold_item_method`, on its trained items made cold, without the held-out items).
    Rebuilds the run's model for its feature path (graphs from the cache)."""
    from rearm.models import get_model

    say = progress.line if progress is not None else (lambda text: None)
    kept = sorted_difference(np.arange(dataset.num_items), cold)
    warm_items = subset_items(dataset, kept)
    bundle = load_bundle(run_dir)
    if bundle.num_items != len(kept) or bundle.num_users != dataset.num_users:
        raise ColdStartError(f"{run_dir}: was not trained on these {len(kept)} items")
    config = bundle.meta["config"]
    variants = cold_item_variants(get_model(config["model"]).feature_free)
    model = None
    if any(method == "features" for _, method, _ in variants):
        model = rebuild_model(Path(run_dir) / BUNDLE_DIR, config, warm_items)
        check_reproduces(model, bundle, str(run_dir))
    features = {name: np.asarray(table)[cold] for name, table in dataset.features.items()}
    tables, seconds = {}, {}
    for label, method, k in variants:
        begin = time.perf_counter()
        tables[label] = cold_item_table(
            model, features, warm_items, config, bundle.item_repr, method, k or DEFAULT_NEIGHBOURS
        )
        seconds[label] = round(time.perf_counter() - begin, 4)
    begin = time.perf_counter()
    choice = choose_cold_item_method(model, bundle.user_repr, bundle.item_repr, warm_items, config)
    choice["seconds"] = round(time.perf_counter() - begin, 2)
    items = np.zeros((dataset.num_items, bundle.item_repr.shape[1]), dtype=np.float32)
    items[kept] = bundle.item_repr
    reference = load_bundle(warm_run) if warm_run is not None else None
    found: dict[str, Any] = {}
    for split in ("valid", "test"):
        # evaluated: users with a `split` interaction with a cold item; held out: those
        only_cold = sp.csr_matrix(getattr(dataset, split) @ _columns(cold, dataset))
        only_cold.eliminate_zeros()
        users = np.flatnonzero(only_cold.getnnz(axis=1) > 0)
        heldout = only_cold[users]
        mask = sp.csr_matrix(protocol.mask_matrix(dataset, split)[users])
        scores = {}
        for label, table in tables.items():
            items[cold] = table
            scores[f"model {label}"] = bundle.user_repr[users] @ items.T
        scores["content_knn"] = content_knn_scores(
            users, warm_items_history(dataset, kept), dataset.features
        )
        if reference is not None:
            scores["model_trained_warm"] = reference.user_repr[users] @ reference.item_repr.T
        among_all = {name: _metrics(s, heldout, mask, protocol.ks) for name, s in scores.items()}
        if split == "valid":
            found["cold_items_valid"] = among_all
            continue
        found["evaluated_users"] = len(users)
        found["heldout_interactions"] = int(heldout.nnz)
        found["cold_items"] = among_all
        found["cold_items_among_themselves"] = {
            name: _metrics(s[:, cold], heldout[:, cold], mask[:, cold], protocol.ks)
            for name, s in scores.items()
        }
        # whether cold items are found at the expense of the same users' other test items
        every = sp.csr_matrix(dataset.test[users])
        found["evaluated_users_all_test_items"] = {
            name: _metrics(s, every, mask, protocol.ks) for name, s in scores.items()
        }
    valid = found["cold_items_valid"]
    best = max(tables, key=lambda label: valid[f"model {label}"]["Recall@20"])
    found["best_cold_item_method_by_valid"] = best
    found["add_items_choice"] = choice
    found["cold_representation_s"] = seconds
    say(
        "cold items' test Recall@20 among all items: "
        + ", ".join(f"{name} {row['Recall@20']:.4f}" for name, row in found["cold_items"].items())
    )
    say(
        "... among the cold items only: "
        + ", ".join(
            f"{name} {row['Recall@20']:.4f}"
            for name, row in found["cold_items_among_themselves"].items()
        )
    )
    say(
        f"best representation on the cold items' valid interactions: {best}; add-items "
        f"--method auto (on the trained items made cold) chooses {choice['label']}"
    )
    return found


def _columns(index: np.ndarray, dataset: Dataset) -> sp.dia_matrix:
    """Diagonal [I, I] 0/1 matrix keeping the columns `index` (right-multiply)."""
    row = np.zeros(dataset.num_items, dtype=np.float32)
    row[index] = 1.0
    return sp.diags(row)


def warm_items_history(dataset: Dataset, kept: np.ndarray) -> sp.csr_matrix:
    """Each user's train items among the kept items, in the full item numbering."""
    history = sp.csr_matrix(dataset.train @ _columns(kept, dataset))
    history.eliminate_zeros()
    return history


__all__ = [
    "COLD_ITEM_METHODS",
    "FOLD_IN_METHODS",
    "add_items",
    "cold_item_table",
    "cold_item_variants",
    "cold_items_protocol",
    "cold_users_protocol",
    "content_knn_scores",
    "draw_cold_items",
    "draw_cold_users",
    "evaluate_cold_items",
    "evaluate_cold_users",
    "feature_neighbours",
    "feature_path_table",
    "neighbour_rows",
    "read_new_items",
    "rebuild_model",
]
