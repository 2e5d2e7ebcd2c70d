"""On-disk cache of built graphs, keyed by the full recipe.

A cache entry's key is the SHA-256 of (dataset fingerprint, builder name, builder version, every
builder argument as canonical JSON), so a changed argument, changed data or a changed builder never
reuses a stale graph. Entries are scipy ``.npz`` (sparse CSR graphs) or ``.array.npz`` (one dense
array, such as user interest features), written atomically (temporary file in the same folder +
os.replace), so concurrent writers of one entry each replace it whole; the zip CRC-32 of every
member is checked on reading.

Location: ``GraphCache(directory)`` or, by default, $REARM_CACHE_DIR, else $XDG_CACHE_HOME/rearm,
else ~/.cache/rearm; graphs live under ``<root>/graphs``. Never next to the user's data.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from rearm.io import atomic_open


def default_cache_root() -> Path:
    """$REARM_CACHE_DIR, else $XDG_CACHE_HOME/rearm, else ~/.cache/rearm."""
    if os.environ.get("REARM_CACHE_DIR"):
        return Path(os.environ["REARM_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "rearm"
    return Path.home() / ".cache" / "rearm"


class GraphCache:
    """Content-addressed store of graphs and arrays (see module docstring).

    A damaged entry (truncated, altered: zip CRC-32 or format check fails) is rebuilt and
    replaced; an entry that cannot be written (read-only or full disk) is skipped. Either is
    reported on one line through `report` (default: stderr).

    Attributes:
        directory: where entries are written.
        hits, misses: counters of `graph` / `array` lookups in this object's lifetime.
        damaged: paths of damaged entries met (and rebuilt) in this object's lifetime.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = (
            Path(directory) if directory is not None else default_cache_root() / "graphs"
        )
        self.report = report or _to_stderr
        self.hits = 0
        self.misses = 0
        self.damaged: list[Path] = []

    @staticmethod
    def key(
        fingerprint: str, builder: str, version: int | str, arguments: Mapping[str, Any]
    ) -> str:
        """Hex SHA-256 of the recipe; `arguments` must be JSON-serialisable."""
        recipe = {
            "fingerprint": fingerprint,
            "builder": builder,
            "version": version,
            "arguments": _canonical(arguments),
        }
        text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, key: str, suffix: str) -> Path:
        return self.directory / f"{key}{suffix}"

    def graph(
        self,
        fingerprint: str,
        builder: str,
        version: int | str,
        arguments: Mapping[str, Any],
        build: Callable[[], sp.spmatrix],
    ) -> sp.csr_matrix:
        """The cached CSR graph for this recipe, or `build()` it, store it and return it."""
        path = self.path(self.key(fingerprint, builder, version, arguments), ".npz")
        loaded = self._load(path, lambda: sp.load_npz(path).tocsr(), builder)
        if loaded is not None:
            return loaded
        matrix = sp.csr_matrix(build())
        self._save(path, lambda handle: sp.save_npz(handle, matrix, compressed=False), builder)
        return matrix

    def array(
        self,
        fingerprint: str,
        builder: str,
        version: int | str,
        arguments: Mapping[str, Any],
        build: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """The cached dense array for this recipe, or `build()` it, store it and return it.
        Stored as a one-member `.npz` so that its zip CRC-32 reveals damage."""
        path = self.path(self.key(fingerprint, builder, version, arguments), ".array.npz")

        def load() -> np.ndarray:
            with np.load(path, allow_pickle=False) as entry:
                return entry["array"]

        loaded = self._load(path, load, builder)
        if loaded is not None:
            return loaded
        array = np.asarray(build())
        self._save(path, lambda handle: np.savez(handle, array=array), builder)
        return array

    def _load(self, path: Path, load: Callable[[], Any], builder: str) -> Any:
        if not path.exists():
            self.misses += 1
            return None
        try:
            loaded = load()
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            self.misses += 1
            self.damaged.append(path)
            self.report(
                f"graph cache: entry {path.name} ({builder}) is damaged "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                "rebuilding it"
            )
            return None
        self.hits += 1
        return loaded

    def _save(self, path: Path, write: Callable[[Any], None], builder: str) -> None:
        try:
            with atomic_open(path, "wb") as handle:
                write(handle)
        except OSError as error:
            self.report(
                f"graph cache: cannot write {path} ({builder}: {error.strerror or error}); "
                "continuing without caching it"
            )


def _to_stderr(text: str) -> None:
    print(f"rearm: {text}", file=sys.stderr)


def _canonical(value: Any) -> Any:
    """JSON-stable form: mappings sorted, tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cache key argument of type {type(value).__name__} is not JSON-serialisable")
