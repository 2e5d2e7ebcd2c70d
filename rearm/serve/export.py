"""Batch export of a saved run: top-k for every user (or a list of users), and the user and item
representation tables.

Top-k goes through `Bundle.top_k_index`, the function behind `Bundle.recommend` and `rearm
recommend`, so an exported list equals what the CLI and the server answer. Users are taken in
chunks (`chunk_users`, default 2,048): memory is one chunk's score matrix (chunk x items x 4
bytes, 58 MB for Baby's 7,050 items) and its top-k work, whatever the number of users. Every
output is written to a temporary file (folder, for embeddings) beside the target and renamed into
place at the end, so an interrupted export never leaves a file that looks complete.

Formats (ids are the data's own ids; integers when the data has none):
  parquet, csv  one row per (user, rank): user, rank (1 = best), item, score; a user gets fewer
                than k rows only when fewer than k items are left once its train items are out
  npz           user [n], items [n, k], scores [n, k] float32; places past a user's last item
                hold score -inf and item -1 (integer ids) or "" (string ids)
  embeddings    a folder with users.parquet (user, vector) and items.parquet (item, vector):
                the final representations whose inner product is the model's score
"""

import contextlib
import io
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from rearm.errors import ConfigError, RunError
from rearm.experiments.bundle import Bundle, csr_rows, load_bundle
from rearm.io import atomic_open, staged_folder
from rearm.models.base import Range, check_type

FORMATS = ("parquet", "csv", "npz", "embeddings")
TopK = Annotated[int, Range(ge=1)]
ChunkUsers = Annotated[int, Range(ge=1)]
EMBEDDING_FILES = ("users.parquet", "items.parquet")


def export_top_k(
    source: str | os.PathLike | Bundle,
    out: str | os.PathLike,
    *,
    k: TopK = 100,
    fmt: str | None = None,
    users: list[str] | None = None,
    chunk_users: ChunkUsers = 2048,
    progress=None,
) -> dict[str, Any]:
    """Write the top-k items of every user (or of `users`, external ids) to `out` as parquet,
    csv or npz (`fmt`; default from the suffix of `out`). Returns {"path", "format", "users",
    "k", "rows", "seconds"}.

    Raises:
        ConfigError: bad format, k or chunk size; pyarrow missing for parquet.
        UnknownUserError: an id in `users` the model does not know.
        RunError: the run has no usable bundle.
    """
    started = time.perf_counter()
    out = Path(out)
    fmt = _format(fmt, out)
    if fmt == "embeddings":
        raise ConfigError("--format embeddings writes a folder: use export_embeddings")
    check_type(k, TopK, "-k")
    check_type(chunk_users, ChunkUsers, "--chunk-users")
    if out.is_dir():
        raise ConfigError(
            f"--out {out}: is a folder; give the file to write, e.g. {out / f'top_k.{fmt}'}"
        )
    _check_writable(out)  # before the scoring, not after it
    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    index = (
        np.arange(bundle.num_users, dtype=np.int64) if users is None else bundle.user_index(users)
    )
    if not len(index):
        raise ConfigError("--users: the list is empty")
    width = min(k, bundle.num_items)
    writer = {"parquet": _parquet_top_k, "csv": _csv_top_k, "npz": _npz_top_k}[fmt]
    with _write_errors(out), writer(out, bundle, len(index), width) as write:
        rows = 0
        for start in range(0, len(index), chunk_users):
            chunk = index[start : start + chunk_users]
            items, scores = bundle.top_k_index(
                bundle.user_repr[chunk], k, seen=csr_rows(bundle.split("train"), chunk)
            )
            rows += write(start, chunk, items, scores)
            if progress is not None:
                done = start + len(chunk)
                progress.update(
                    f"export: {done:,}/{len(index):,} users ({100 * done // len(index)}%), "
                    f"{time.perf_counter() - started:.1f}s"
                )
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.line(f"export: {len(index):,} users, top {width} -> {out} ({seconds:.1f}s)")
    return {
        "path": str(out),
        "format": fmt,
        "users": int(len(index)),
        "k": width,
        "rows": int(rows),
        "seconds": round(seconds, 3),
    }


def export_embeddings(
    source: str | os.PathLike | Bundle,
    out: str | os.PathLike,
    *,
    chunk_users: ChunkUsers = 2048,
    progress=None,
) -> dict[str, Any]:
    """Write the folder `out` with users.parquet (user, vector) and items.parquet (item, vector),
    vectors float32 fixed-size lists. An existing `out` is replaced only if it holds nothing but
    those two files. Returns {"path", "format", "users", "items", "dim", "seconds"}."""
    started = time.perf_counter()
    check_type(chunk_users, ChunkUsers, "--chunk-users")
    pa, pq = _pyarrow()
    bundle = source if isinstance(source, Bundle) else load_bundle(source)
    out = Path(out)
    _check_writable(out)  # the stage is built beside out
    try:
        with (
            _write_errors(out),
            staged_folder(
                out, replace=lambda path: {p.name for p in path.iterdir()} <= set(EMBEDDING_FILES)
            ) as stage,
        ):
            for name, column, table, ids in (
                ("users.parquet", "user", bundle.user_repr, _external_users(bundle)),
                ("items.parquet", "item", bundle.item_repr, _external_item_table(bundle)),
            ):
                _write_vectors(pa, pq, stage / name, column, ids, table, chunk_users, progress)
    except FileExistsError as error:
        raise ConfigError(
            f"--out: {error}; embeddings go to a new folder or one holding only "
            f"{' and '.join(EMBEDDING_FILES)}"
        ) from None
    seconds = time.perf_counter() - started
    if progress is not None:
        progress.line(
            f"export: {bundle.num_users:,} users and {bundle.num_items:,} items -> {out} "
            f"({seconds:.1f}s)"
        )
    return {
        "path": str(out),
        "format": "embeddings",
        "users": bundle.num_users,
        "items": bundle.num_items,
        "dim": int(bundle.item_repr.shape[1]),
        "seconds": round(seconds, 3),
    }


def _check_writable(out: Path) -> None:
    """A RunError now if `out`'s folder cannot be made or written in (no permission, a file in
    the way, a read-only disk), rather than after minutes of scoring."""
    with _write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass


@contextlib.contextmanager
def _write_errors(out: Path, *, passing: tuple[type[OSError], ...] = ()) -> Iterator[None]:
    """OSError -> RunError naming `out` (`passing`: the types the caller answers itself)."""
    try:
        yield
    except passing:
        raise
    except OSError as error:
        raise RunError(f"--out {out}: cannot write ({error.strerror or error})") from None


def _write_vectors(pa, pq, path, column, ids, table, chunk_users, progress) -> None:
    dim = table.shape[1]
    schema = pa.schema([(column, _id_type(pa, ids)), ("vector", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(table), chunk_users):
            block = np.ascontiguousarray(table[start : start + chunk_users], np.float32)
            vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
            writer.write_table(
                pa.table(
                    {column: ids[start : start + len(block)], "vector": vectors}, schema=schema
                )
            )
            if progress is not None:
                progress.update(f"export: {path.name} {start + len(block):,}/{len(table):,}")


def read_user_ids(path: str | os.PathLike) -> list[str]:
    """User ids from a text file, one per line (blank lines and surrounding spaces ignored)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RunError(f"{path}: cannot read the user list ({error.strerror or error})") from None
    if b"\0" in data:
        raise RunError(f"{path}: binary data, expected text with one user id per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text") from None
    users = [line.strip() for line in text.splitlines() if line.strip()]
    if not users:
        raise RunError(f"{path}: no user ids in the file")
    return users


def _format(fmt: str | None, out: Path) -> str:
    if fmt is None:
        fmt = {".parquet": "parquet", ".csv": "csv", ".npz": "npz"}.get(out.suffix.lower())
        if fmt is None:
            raise ConfigError(
                f"--format: give one of {', '.join(FORMATS)} (the suffix of {out} does not say)"
            )
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("Parquet output needs pyarrow: pip install 'rearm[parquet]'") from None
    return pa, pq


def _external_users(bundle: Bundle) -> np.ndarray:
    if bundle.user_ids is None:
        return np.arange(bundle.num_users, dtype=np.int64)
    return np.asarray(bundle.user_ids, dtype=str)


def _external_item_table(bundle: Bundle) -> np.ndarray:
    if bundle.item_ids is None:
        return np.arange(bundle.num_items, dtype=np.int64)
    return np.asarray(bundle.item_ids, dtype=str)


def _id_type(pa, ids: np.ndarray):
    return pa.int64() if ids.dtype.kind in "iu" else pa.string()


def _long_rows(
    user_ids: np.ndarray, item_ids: np.ndarray, chunk: np.ndarray, items, scores
) -> tuple[np.ndarray, ...]:
    """(user, rank, item, score) columns of a chunk, places with score -inf left out."""
    keep = np.isfinite(scores)
    rank = np.broadcast_to(np.arange(1, items.shape[1] + 1, dtype=np.int32), items.shape)
    user = np.broadcast_to(user_ids[chunk][:, None], items.shape)
    return user[keep], rank[keep], item_ids[items[keep]], scores[keep]


@contextlib.contextmanager
def _parquet_top_k(out: Path, bundle: Bundle, num_users: int, width: int) -> Iterator:
    pa, pq = _pyarrow()
    user_ids, item_ids = _external_users(bundle), _external_item_table(bundle)
    schema = pa.schema(
        [
            ("user", _id_type(pa, user_ids)),
            ("rank", pa.int32()),
            ("item", _id_type(pa, item_ids)),
            ("score", pa.float32()),
        ]
    )
    with atomic_open(out, "wb") as handle, pq.ParquetWriter(handle, schema) as writer:

        def write(start, chunk, items, scores) -> int:
            columns = _long_rows(user_ids, item_ids, chunk, items, scores)
            writer.write_table(pa.table(dict(zip(schema.names, columns)), schema=schema))
            return len(columns[0])

        yield write


@contextlib.contextmanager
def _csv_top_k(out: Path, bundle: Bundle, num_users: int, width: int) -> Iterator:
    import csv

    user_ids, item_ids = _external_users(bundle), _external_item_table(bundle)
    with atomic_open(out, "wb") as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["user", "rank", "item", "score"])

        def write(start, chunk, items, scores) -> int:
            user, rank, item, score = _long_rows(user_ids, item_ids, chunk, items, scores)
            # tolist(): Python ints / strs / floats; a float32 score prints as the shortest
            # decimal that reads back to the same value
            writer.writerows(zip(user.tolist(), rank.tolist(), item.tolist(), score.tolist()))
            return len(user)

        yield write
        handle.flush()
        handle.detach()  # atomic_open closes the file itself


@contextlib.contextmanager
def _npz_top_k(out: Path, bundle: Bundle, num_users: int, width: int) -> Iterator:
    """Fills memory-mapped .npy files in a temporary folder beside `out` chunk by chunk, then
    stores them (uncompressed, like np.savez) in the .npz."""
    user_ids, item_ids = _external_users(bundle), _external_item_table(bundle)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.parts-"))
    try:
        arrays = {
            "user": np.lib.format.open_memmap(
                scratch / "user.npy", "w+", user_ids.dtype, (num_users,)
            ),
            "items": np.lib.format.open_memmap(
                scratch / "items.npy", "w+", item_ids.dtype, (num_users, width)
            ),
            "scores": np.lib.format.open_memmap(
                scratch / "scores.npy", "w+", np.float32, (num_users, width)
            ),
        }
        blank = -1 if item_ids.dtype.kind in "iu" else ""

        def write(start, chunk, items, scores) -> int:
            end = start + len(chunk)
            arrays["user"][start:end] = user_ids[chunk]
            arrays["items"][start:end] = np.where(np.isfinite(scores), item_ids[items], blank)
            arrays["scores"][start:end] = scores
            return int(np.isfinite(scores).sum())

        yield write
        for array in arrays.values():
            array.flush()
        arrays.clear()  # unmaps the files
        with atomic_open(out, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
            for name in ("user", "items", "scores"):
                archive.write(scratch / f"{name}.npy", arcname=f"{name}.npy")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
