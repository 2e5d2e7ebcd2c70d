"""The queries a recommendation service answers, over one saved bundle loaded once, read-only.

Loading never unpickles anything: the bundle's tables come from `.npz` files read by `np.load`
with `allow_pickle=False` (numpy's default) and the ids from JSON; `weights.pt` is only hashed, to
check it against the SHA-256 record in bundle.json, never loaded.

Two ways to rank:
- `exact` (default): every request scores all items with one matrix product; recommendations are
  the same function as `Bundle.recommend` / `rearm recommend` (seen train items left out, ties to
  the lower item index).
- `faiss`: an inverted-file inner-product index over the item vectors (`pip install
  'rearm[faiss]'`) searched for k + (the most train items among the asked users) + (excluded
  items) candidates, which are then filtered: approximate, so results can differ from `exact`.

Similar items use the cosine of the item representations (see `Service.similar`).
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from rearm.errors import ConfigError, RearmError, RunError
from rearm.experiments.bundle import BUNDLE_DIR, Bundle, load_bundle, stable_top_k
from rearm.io import file_sha256
from rearm.models.base import Range, check_type

INDEXES = ("exact", "faiss")
Nprobe = Annotated[int, Range(ge=1)]


class Service:
    """A read-only bundle ready to answer requests from many threads at once.

    Args:
        run_dir: a run directory holding model/ (RunError if missing, damaged or altered).
        index: "exact" or "faiss".
        nprobe: faiss only: inverted lists searched per query (more: closer to exact, slower).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        index: str = "exact",
        nprobe: Nprobe = 32,
    ) -> None:
        from rearm.experiments.status import require_model

        if index not in INDEXES:
            raise ConfigError(f"--index: expected one of {', '.join(INDEXES)}, got {index!r}")
        check_type(nprobe, Nprobe, "--nprobe")
        self.run_dir = Path(run_dir)
        self.status = require_model(run_dir)
        self.bundle: Bundle = load_bundle(run_dir, verify=True)
        meta_path = self.run_dir / BUNDLE_DIR / "bundle.json"
        # bundles written before the SHA-256 record existed load, but unverified
        self.verified = isinstance(self.bundle.meta.get("files"), dict)
        self.bundle_sha256 = file_sha256(meta_path)
        self.created = datetime.datetime.fromtimestamp(
            meta_path.stat().st_mtime, datetime.timezone.utc
        ).isoformat(timespec="seconds")
        bundle = self.bundle
        bundle.user_repr = np.ascontiguousarray(bundle.user_repr, dtype=np.float32)
        bundle.item_repr = np.ascontiguousarray(bundle.item_repr, dtype=np.float32)
        for array in (bundle.user_repr, bundle.item_repr):
            array.flags.writeable = False
        # built now rather than by the first request (or by several racing ones)
        bundle.user_index([])
        bundle.item_index([])
        self.fold_in_note = _warm_fold_in(bundle)
        self.train = bundle.split("train")
        self.train_counts = np.diff(self.train.indptr)
        norms = np.linalg.norm(bundle.item_repr, axis=1, keepdims=True)
        # an all-zero item vector has cosine 0 with everything
        self.item_unit = np.divide(
            bundle.item_repr, norms, out=np.zeros_like(bundle.item_repr), where=norms > 0
        )
        self.item_unit.flags.writeable = False
        self.index = index
        self.nprobe = nprobe
        self._faiss = None
        if index == "faiss":
            self._faiss = (
                _faiss_index(bundle.item_repr, nprobe),
                _faiss_index(self.item_unit, nprobe),
            )
        self.metrics = _run_metrics(self.run_dir)

    def info(self) -> dict[str, Any]:
        """What the service holds: model, sizes, protocol, the run's metrics, creation time and
        the SHA-256 of bundle.json (which records the SHA-256 of every other bundle file)."""
        import rearm

        meta = self.bundle.meta
        return {
            "model": meta["model"],
            "num_users": self.bundle.num_users,
            "num_items": self.bundle.num_items,
            "dim": int(self.bundle.item_repr.shape[1]),
            "modalities": meta.get("modalities", []),
            "protocol": meta["protocol"],
            "metrics": self.metrics,
            "run_status": None if self.status is None else self.status["status"],
            "created": self.created,
            "bundle_sha256": self.bundle_sha256,
            "verified": self.verified,
            "index": self.index,
            "rearm_version": rearm.__version__,
        }

    def recommend(
        self, users: list[str], k: int = 20, exclude: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """[{"user", "items", "scores"}, ...]: `Bundle.recommend` for the exact index (the very
        function `rearm recommend` calls); the faiss index's candidates, filtered, otherwise."""
        if self._faiss is None:
            return self.bundle.recommend(users, k, exclude=exclude)
        index = self.bundle.user_index(users)
        excluded = self.bundle.item_index(exclude or [])
        seen = self.train[index]
        fetch = int(self.train_counts[index].max(initial=0)) + len(excluded) + k
        found, scores = _search(self._faiss[0], self.bundle.user_repr[index], fetch)
        out = []
        for row, user in enumerate(users):
            drop = np.concatenate([seen.indices[seen.indptr[row] : seen.indptr[row + 1]], excluded])
            keep = (found[row] >= 0) & ~np.isin(found[row], drop)
            items = found[row][keep][:k]
            out.append(
                {
                    "user": user,
                    "items": self.bundle.external_items(items.tolist()),
                    "scores": scores[row][keep][:k].tolist(),
                }
            )
        return out

    def similar(self, item: str, k: int = 20, exclude: list[str] | None = None) -> dict[str, Any]:
        """{"item", "items", "scores"}: the k items whose representations have the highest cosine
        with `item`'s, the item itself and `exclude` left out, ties to the lower item index.

        Cosine rather than the inner product: the inner product grows with an item's vector
        norm, which in these models tracks popularity, so the same few popular items would be
        "similar" to everything, and an item would not always be most similar to itself."""
        (position,) = self.bundle.item_index([item])
        excluded = self.bundle.item_index(exclude or [])
        if self._faiss is not None:
            fetch = k + 1 + len(excluded)
            found, scores = _search(self._faiss[1], self.item_unit[position : position + 1], fetch)
            drop = np.append(excluded, position)
            keep = (found[0] >= 0) & ~np.isin(found[0], drop)
            items, values = found[0][keep][:k], scores[0][keep][:k]
        else:
            row = self.item_unit @ self.item_unit[position]
            row[position] = -np.inf
            row[excluded] = -np.inf
            order = stable_top_k(row[None, :], min(k, self.bundle.num_items))[0]
            order = order[np.isfinite(row[order])]
            items, values = order, row[order]
        return {
            "item": item,
            "items": self.bundle.external_items(items.tolist()),
            "scores": values.tolist(),
        }

    def recommend_items(
        self, items: list[str], k: int = 20, exclude: list[str] | None = None
    ) -> dict[str, Any]:
        """{"items", "scores"} for a user the model has never seen, from the items they
        interacted with (`Bundle.recommend_from_items`, exact)."""
        return self.bundle.recommend_from_items(items, k, exclude=exclude)


def _warm_fold_in(bundle: Bundle) -> str | None:
    """Fold in one item now: the bundle caches what every fold-in needs (V^T V and whatever
    else it computes on first use), which would otherwise land on the first request to
    /recommend/items. Returns the error message if fold-in does not work for this bundle (the
    endpoint then answers with it), else None."""
    try:
        bundle.recommend_from_items([str(bundle.external_items([0])[0])], 1)
    except RearmError as error:
        return str(error)
    return None


def _faiss_index(vectors: np.ndarray, nprobe: int):
    """An inverted-file inner-product index over `vectors` [n, D]: about 4 sqrt(n) lists (at
    least 39 training points each, faiss's minimum), nprobe of them searched per query."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "--index faiss needs the optional faiss-cpu package: pip install 'rearm[faiss]'"
        ) from None
    n, dim = vectors.shape
    lists = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    index.train(data)
    index.add(data)
    index.nprobe = min(nprobe, lists)
    return index


def _search(index, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
    fetch = min(fetch, index.ntotal)
    scores, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), fetch)
    return found, scores


def _run_metrics(run_dir: Path) -> dict[str, Any] | None:
    """valid / test metrics and the best epoch from RUN_DIR/results.json (None without it)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable run results ({error})") from None
    if not isinstance(results, dict):
        raise RunError(f"{path}: unreadable run results (not a JSON object)")
    return {key: results.get(key) for key in ("best_epoch", "valid", "test")}
