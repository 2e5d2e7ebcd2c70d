"""Readers for the three on-disk layouts, auto-detected from a path.

* REARM: a folder with `train.npy`, `valid.npy`, `test.npy` (int arrays (2, N): row 0 users,
  row 1 items) and any number of `<name>_feat.npy` item feature tables (modality `<name>`).
* MMRec: a folder with one `<name>.inter` tab-separated file whose header has `userID`, `itemID`
  and `x_label` (0 train, 1 valid, 2 test), plus `<name>_feat.npy` files.
* Tabular: a CSV / TSV / Parquet file with columns user, item, split (train / valid / test) whose
  ids are arbitrary strings. Features are `.npy` tables aligned to an item-id list (a text file,
  one id per line) or Parquet files with an item column and a vector (list) column. Given either
  directly (`features={"image": "img.npy"}, item_list="items.txt"`) or by the folder convention
  `interactions.csv|tsv|parquet` + `items.txt` + `<name>_feat.npy|parquet`.

Every problem is reported as one DataError line naming the file, the field and the problem.
"""

from __future__ import annotations

import csv
import os
import tokenize
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.lib.format as npy_format

from rearm.arrays import sorted_unique
from rearm.data.dataset import SPLITS, Dataset
from rearm.errors import DataError

FORMATS = ("auto", "rearm", "mmrec", "tabular")
FEATURE_SUFFIX = "_feat"
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t", ".inter": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
INTERACTIONS_STEM = "interactions"
ITEM_LIST_NAME = "items.txt"
MMREC_COLUMNS = ("userID", "itemID", "x_label")

PathLike = str | os.PathLike


def load_dataset(
    path: PathLike,
    *,
    format: str = "auto",
    features: Mapping[str, PathLike] | None = None,
    item_list: PathLike | None = None,
    user_col: str = "user",
    item_col: str = "item",
    split_col: str = "split",
    vector_col: str | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
    mmap: bool = True,
) -> Dataset:
    """Read a data set from `path`, detecting its layout unless `format` names one.

    Args:
        path: a REARM or MMRec folder, a tabular folder, or a CSV / TSV / Parquet file.
        format: "auto", "rearm", "mmrec" or "tabular".
        features: extra or overriding modality files {name: path}. For REARM / MMRec they are
            `.npy` tables [num_items, dim] indexed by item id; for tabular data `.npy` tables
            aligned to `item_list`, or Parquet files with an item and a vector column.
        item_list: tabular only: text file with one item id per line; row r of every `.npy`
            feature table belongs to the item on line r. It also fixes the item order.
        user_col, item_col, split_col: tabular column names (item_col also names the item
            column of Parquet feature files).
        vector_col: the list column of Parquet feature files (default: their only list column).
        num_users, num_items: REARM / MMRec only: declared sizes when trailing ids never
            interact (default: largest id + 1).
        mmap: memory-map float32 feature tables (copy-on-write) instead of reading them.

    Returns:
        A validated Dataset; `Dataset.files` lists every file read, `Dataset.format` the layout.
    """
    if format not in FORMATS:
        raise DataError(
            f"--format: unknown format {format!r}; expected one of {', '.join(FORMATS)}"
        )
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if format == "auto":
        format = detect_format(path)
    if format != "tabular":
        for option, value in (("item_list", item_list), ("vector_col", vector_col)):
            if value is not None:
                raise DataError(f"{option}: only used by tabular data, not the {format} layout")
    if format == "tabular":
        for option, value in (("num_users", num_users), ("num_items", num_items)):
            if value is not None:
                raise DataError(f"{option}: tabular data sizes come from the ids; drop it")
        return read_tabular(
            path,
            features=features,
            item_list=item_list,
            user_col=user_col,
            item_col=item_col,
            split_col=split_col,
            vector_col=vector_col,
            mmap=mmap,
        )
    reader = read_rearm if format == "rearm" else read_mmrec
    return reader(path, features=features, num_users=num_users, num_items=num_items, mmap=mmap)


def detect_format(path: PathLike) -> str:
    """Name the layout of `path` ("rearm", "mmrec" or "tabular") or raise a DataError."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".inter":
            return "mmrec"
        if suffix in TABLE_DELIMITERS or suffix in PARQUET_SUFFIXES:
            return "tabular"
        raise DataError(
            f"{path}: cannot tell the data layout of a {suffix or 'suffix-less'} file; give a "
            "REARM or MMRec folder, or a .csv / .tsv / .parquet interactions file"
        )
    if not path.is_dir():
        raise DataError(f"{path}: not a file or folder")
    found = []
    if any((path / f"{split}.npy").exists() for split in SPLITS):
        found.append("rearm")
    if any(path.glob("*.inter")):
        found.append("mmrec")
    if _tabular_interactions(path, required=False) is not None:
        found.append("tabular")
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{path}: holds several layouts ({', '.join(found)}); pass --format")
    raise DataError(
        f"{path}: no data set found: expected train.npy/valid.npy/test.npy (REARM), one "
        f"<name>.inter file (MMRec) or {INTERACTIONS_STEM}.csv|tsv|parquet (tabular)"
    )


# ----------------------------------------------------------------------------------------------
# REARM and MMRec layouts: integer ids, features indexed by item id


def read_rearm(
    folder: PathLike,
    *,
    features: Mapping[str, PathLike] | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
    mmap: bool = True,
) -> Dataset:
    """Read the REARM layout: {train,valid,test}.npy int (2, N) plus `<name>_feat.npy` tables."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: the REARM layout is a folder, not a file")
    files = {}
    pairs = {}
    for split in SPLITS:
        split_path = folder / f"{split}.npy"
        if not split_path.exists():
            raise DataError(f"{split_path}: missing {split} split file (REARM layout: {folder})")
        pairs[split] = load_npy(split_path)
        files[split] = str(split_path)
    feature_paths = {**_discover_features(folder, (".npy",)), **_as_paths(features)}
    return _from_indexed_pairs(
        pairs, feature_paths, files, {}, "rearm", folder, num_users, num_items, mmap
    )


def read_mmrec(
    path: PathLike,
    *,
    features: Mapping[str, PathLike] | None = None,
    num_users: int | None = None,
    num_items: int | None = None,
    mmap: bool = True,
) -> Dataset:
    """Read the MMRec layout: one tab-separated `<name>.inter` (userID, itemID, x_label) plus
    `<name>_feat.npy` tables. `path` is the folder or the .inter file itself."""
    path = Path(path)
    if path.is_dir():
        folder = path
        inter_files = sorted(folder.glob("*.inter"))
        if not inter_files:
            raise DataError(f"{folder}: no <name>.inter file (MMRec layout)")
        if len(inter_files) > 1:
            names = ", ".join(p.name for p in inter_files)
            raise DataError(f"{folder}: several .inter files ({names}); give the one to read")
        inter = inter_files[0]
    else:
        folder, inter = path.parent, path
    columns = read_table(inter, MMREC_COLUMNS, delimiter="\t")
    users = _parse_ids(columns["userID"], inter, "userID")
    items = _parse_ids(columns["itemID"], inter, "itemID")
    labels = _parse_ids(columns["x_label"], inter, "x_label")
    unknown = labels > 2
    if unknown.any():
        raise DataError(
            f"{inter}: column 'x_label': unknown split label {int(labels[unknown][0])} in "
            f"{int(unknown.sum())} rows (expected 0 train, 1 valid, 2 test)"
        )
    pairs = {
        split: np.stack([users[labels == code], items[labels == code]])
        for code, split in enumerate(SPLITS)
    }
    split_labels = {split: f"{inter} (x_label {code})" for code, split in enumerate(SPLITS)}
    feature_paths = {**_discover_features(folder, (".npy",)), **_as_paths(features)}
    return _from_indexed_pairs(
        pairs,
        feature_paths,
        {"interactions": str(inter)},
        split_labels,
        "mmrec",
        path,
        num_users,
        num_items,
        mmap,
    )


def _from_indexed_pairs(
    pairs: dict[str, np.ndarray],
    feature_paths: dict[str, Path],
    files: dict[str, str],
    split_labels: dict[str, str],
    format: str,
    source: Path,
    num_users: int | None,
    num_items: int | None,
    mmap: bool,
) -> Dataset:
    tables = {}
    for name, feature_path in feature_paths.items():
        if feature_path.suffix.lower() != ".npy":
            raise DataError(
                f"{feature_path}: modality {name!r}: the {format} layout takes .npy feature "
                "tables indexed by item id"
            )
        tables[name] = load_npy(feature_path, mmap=mmap)
    if num_items is None and tables:
        # Say which side is off here: Dataset.from_pairs would only see "rows != items".
        arrays = [np.asarray(a) for a in pairs.values() if _is_pair_array(a)]
        widest = max((int(a[1].max()) for a in arrays if a.shape[1]), default=-1)
        for name, table in tables.items():
            if table.ndim == 2 and table.shape[0] > widest + 1 >= 1:
                raise DataError(
                    f"{feature_paths[name]}: modality {name!r} has {table.shape[0]} rows but the "
                    f"splits have {widest + 1} items (largest item id + 1); pass "
                    f"num_items={table.shape[0]} (--num-items) if the extra rows are items "
                    "without interactions"
                )
    return Dataset.from_pairs(
        pairs,
        tables,
        num_users=num_users,
        num_items=num_items,
        source=str(source),
        format=format,
        files=files,
        feature_files={name: str(p) for name, p in feature_paths.items()},
        labels=split_labels,
    )


def _is_pair_array(array: np.ndarray) -> bool:
    array = np.asarray(array)
    return array.ndim == 2 and array.shape[0] == 2 and array.dtype.kind in "iu"


# ----------------------------------------------------------------------------------------------
# Tabular layout: string ids mapped to contiguous indices


def read_tabular(
    path: PathLike,
    *,
    features: Mapping[str, PathLike] | None = None,
    item_list: PathLike | None = None,
    user_col: str = "user",
    item_col: str = "item",
    split_col: str = "split",
    vector_col: str | None = None,
    mmap: bool = True,
) -> Dataset:
    """Read (user, item, split) rows with arbitrary string ids; see `load_dataset` for options.

    Id order is deterministic: users and items are sorted (numerically when every id is a
    non-negative integer, else as strings), except that an item list fixes the item order. Items
    that only have features are still items; an interaction item without features is an error.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        table_path = _tabular_interactions(folder, required=True)
        if item_list is None and (folder / ITEM_LIST_NAME).exists():
            item_list = folder / ITEM_LIST_NAME
        discovered = _discover_features(folder, (".npy", *PARQUET_SUFFIXES))
    else:
        table_path, discovered = path, {}
    feature_paths = {**discovered, **_as_paths(features)}

    columns = read_table(table_path, (user_col, item_col, split_col))
    user_values = np.char.strip(columns[user_col])
    item_values = np.char.strip(columns[item_col])
    split_values = np.char.strip(columns[split_col])
    split_codes = _split_codes(split_values, table_path, split_col)
    _reject_empty_ids(user_values, table_path, user_col)
    _reject_empty_ids(item_values, table_path, item_col)

    files = {"interactions": str(table_path)}
    item_ids = None
    if item_list is not None:
        item_list = Path(item_list)
        item_ids = read_item_list(item_list)
        files["item_list"] = str(item_list)

    npy_tables: dict[str, np.ndarray] = {}
    parquet_tables: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, feature_path in feature_paths.items():
        suffix = feature_path.suffix.lower()
        if suffix == ".npy":
            if item_ids is None:
                raise DataError(
                    f"{feature_path}: modality {name!r}: a .npy feature table needs an item list "
                    f"to say which row is which item (item_list= / --item-list, or "
                    f"{ITEM_LIST_NAME} in the folder)"
                )
            npy_tables[name] = load_npy(feature_path, mmap=mmap)
        elif suffix in PARQUET_SUFFIXES:
            parquet_tables[name] = read_parquet_features(feature_path, item_col, vector_col)
        else:
            raise DataError(
                f"{feature_path}: modality {name!r}: feature files must be .npy or .parquet"
            )

    if item_ids is None:
        # Items that only appear in feature files are still items (they have content).
        candidates = [item_values, *(ids for ids, _ in parquet_tables.values())]
        item_ids = _sorted_ids(np.concatenate(candidates))
    user_ids = _sorted_ids(user_values)
    user_index = _index_of(user_ids, user_values)
    item_index = _index_of(item_ids, item_values)
    missing = item_index < 0
    if missing.any():
        first = str(item_values[missing][0])
        count = len(sorted_unique(item_values[missing]))
        problem = "has no features" if feature_paths else "is missing from the item list"
        raise DataError(
            f"{table_path}: column {item_col!r}: item {first!r} {problem} (not in {item_list}; "
            f"{count} such item ids)"
        )

    tables = dict(npy_tables)
    for name, (ids, vectors) in parquet_tables.items():
        tables[name] = _align_vectors(ids, vectors, item_ids, feature_paths[name], name)
    for name, table in npy_tables.items():
        if table.ndim == 2 and table.shape[0] != len(item_ids):
            raise DataError(
                f"{feature_paths[name]}: modality {name!r} has {table.shape[0]} rows but "
                f"{item_list} lists {len(item_ids)} items"
            )
    users_items = np.stack([user_index, item_index])
    pairs = {split: users_items[:, split_codes == code] for code, split in enumerate(SPLITS)}
    split_labels = {split: f"{table_path} ({split_col}={split})" for split in SPLITS}
    return Dataset.from_pairs(
        pairs,
        tables,
        num_users=len(user_ids),
        num_items=len(item_ids),
        source=str(path),
        format="tabular",
        user_ids=user_ids,
        item_ids=item_ids,
        files=files,
        feature_files={name: str(p) for name, p in feature_paths.items()},
        labels=split_labels,
    )


def _tabular_interactions(folder: Path, required: bool) -> Path | None:
    found = [
        folder / f"{INTERACTIONS_STEM}{suffix}"
        for suffix in (".csv", ".tsv", *PARQUET_SUFFIXES)
        if (folder / f"{INTERACTIONS_STEM}{suffix}").exists()
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(f"{folder}: several interaction tables ({names}); keep one")
    if found:
        return found[0]
    if required:
        raise DataError(
            f"{folder}: no {INTERACTIONS_STEM}.csv, .tsv or .parquet (tabular folder layout)"
        )
    return None


def _split_codes(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    labels, codes = np.unique(values, return_inverse=True)
    known = np.array(SPLITS)
    position = np.array([SPLITS.index(str(v)) if str(v) in SPLITS else -1 for v in labels])
    if (position < 0).any():
        bad = labels[position < 0]
        rows = int(np.isin(codes, np.flatnonzero(position < 0)).sum())
        raise DataError(
            f"{path}: column {column!r}: unknown split label {str(bad[0])!r} in {rows} rows "
            f"(expected {', '.join(known)})"
        )
    return position[codes] if len(labels) else np.empty(0, dtype=np.int64)


def _reject_empty_ids(values: np.ndarray, path: Path, column: str) -> None:
    empty = values == ""
    if empty.any():
        raise DataError(f"{path}: column {column!r} is empty in {int(empty.sum())} rows")
    if not values.size:
        return
    # "12.0" is what a spreadsheet or a float column writes for the id 12; read as text it
    # would be another id than "12", so the same user or item would silently become two.
    body, dot, zeros = np.char.partition(values, ".").T
    floaty = (
        (dot == ".") & ascii_digits(body) & ascii_digits(zeros) & (np.char.lstrip(zeros, "0") == "")
    )
    if floaty.any():
        raise DataError(
            f"{path}: column {column!r}: id {str(values[floaty][0])!r} is a whole number written "
            f"as a float ({int(floaty.sum())} rows); write the ids as integers or text"
        )


def ascii_digits(values: np.ndarray) -> np.ndarray:
    """True where a str value is one or more ASCII digits 0-9 (str.isdigit also takes '²' and
    '٣', which int() refuses or reads as another number)."""
    values = np.ascontiguousarray(values, dtype=str)
    if values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    codes = values.view(np.uint32).reshape(*values.shape, -1)
    digits = ((codes >= ord("0")) & (codes <= ord("9"))).sum(axis=-1)
    lengths = np.char.str_len(values)
    return (lengths > 0) & (digits == lengths)


def _sorted_ids(values: np.ndarray) -> np.ndarray:
    """Unique ids in a deterministic order: numeric when all are non-negative integers."""
    unique = sorted_unique(values.astype(str))
    # Up to 18 digits fit int64; lexsort by (value, string) keeps "7" vs "007" in a fixed order.
    if len(unique) and ascii_digits(unique).all() and np.char.str_len(unique).max() < 19:
        unique = unique[np.lexsort((unique, unique.astype(np.int64)))]
    return unique


def _index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position of each value in `ids` (any order), or -1 where absent."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    position = np.searchsorted(sorted_ids, values)
    position = np.minimum(position, max(len(ids) - 1, 0))
    found = (sorted_ids[position] == values) if len(ids) else np.zeros(len(values), dtype=bool)
    return np.where(found, order[position] if len(ids) else -1, -1).astype(np.int64)


def _align_vectors(
    ids: np.ndarray, vectors: np.ndarray, item_ids: np.ndarray, path: Path, name: str
) -> np.ndarray:
    position = _index_of(item_ids, ids)
    if (position < 0).any():
        raise DataError(
            f"{path}: modality {name!r}: item {str(ids[position < 0][0])!r} is not in the item "
            f"list ({int((position < 0).sum())} such rows)"
        )
    covered = np.zeros(len(item_ids), dtype=bool)
    covered[position] = True
    if not covered.all():
        raise DataError(
            f"{path}: modality {name!r}: no feature vector for item "
            f"{str(item_ids[~covered][0])!r} ({int((~covered).sum())} items missing)"
        )
    table = np.empty_like(vectors)
    table[position] = vectors
    return table


def read_item_list(path: PathLike) -> np.ndarray:
    """Item ids, one per line (blank lines skipped; surrounding spaces stripped) -> str [I]."""
    path = Path(path)
    text = _read_text(path)
    ids = np.char.strip(np.array(text.splitlines(), dtype=str))
    ids = ids[ids != ""]
    if len(ids) == 0:
        raise DataError(f"{path}: the item list is empty")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: item {str(unique[counts > 1][0])!r} is listed {int(counts[counts > 1][0])} times "
            f"({int((counts > 1).sum())} duplicated ids)"
        )
    return ids


# ----------------------------------------------------------------------------------------------
# Low-level file readers with one-line errors


def load_npy(path: PathLike, *, mmap: bool = False) -> np.ndarray:
    """Load a .npy file after checking its header and length, so that a truncated file or a
    file that is not .npy at all gives a clear DataError instead of a numpy traceback.

    With `mmap`, a C-ordered float32 array is memory-mapped copy-on-write (writable, shares pages
    until written); anything else is read into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            try:
                version = npy_format.read_magic(handle)
            except ValueError:
                raise DataError(f"{path}: not a .npy file (bad magic bytes)") from None
            read_header = {
                (1, 0): npy_format.read_array_header_1_0,
                (2, 0): npy_format.read_array_header_2_0,
            }.get(version)
            header = None
            if read_header is not None:
                try:
                    header = read_header(handle)
                except (ValueError, SyntaxError, tokenize.TokenError) as error:
                    raise DataError(f"{path}: damaged .npy header ({_first_line(error)})") from None
            data_start = handle.tell()
        if header is None:  # a newer .npy version: let numpy judge it
            return np.load(path, allow_pickle=False)
        shape, fortran_order, dtype = header
        if dtype.hasobject:
            raise DataError(f"{path}: holds Python objects (dtype {dtype}); expected numbers")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        available = path.stat().st_size - data_start
        if available < expected:
            raise DataError(
                f"{path}: truncated .npy file: shape {shape} needs {expected} data bytes, "
                f"found {available}"
            )
        use_mmap = mmap and dtype == np.float32 and not fortran_order and expected > 0
        return np.load(path, mmap_mode="c" if use_mmap else None, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: unreadable .npy file ({_first_line(error)})") from None


def read_table(
    path: PathLike, columns: tuple[str, ...], delimiter: str | None = None
) -> dict[str, np.ndarray]:
    """Read the named columns of a delimited text file (header row) or a Parquet file.

    Returns {column: str array [N]}; the delimiter defaults by suffix (.csv ",", .tsv "\\t").
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise DataError(
            f"{path}: column {repeated[0]!r} is asked for as two fields (e.g. --user-col and "
            "--item-col); each needs its own column"
        )
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet_columns(path, columns)
    if delimiter is None:
        delimiter = TABLE_DELIMITERS.get(path.suffix.lower(), ",")
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if b"\0" in head:
        raise DataError(f"{path}: binary data, not a delimited text table")
    try:
        first_line = head.decode("utf-8-sig").splitlines()[0] if head.strip() else ""
    except UnicodeDecodeError:
        # The 64 KiB cut may split a multi-byte character; only the header line matters here.
        try:
            first_line = head.split(b"\n", 1)[0].decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a UTF-8 text table") from None
    if not first_line.strip():
        raise DataError(f"{path}: empty file, expected a header row with {', '.join(columns)}")
    header = [name.strip() for name in next(csv.reader([first_line], delimiter=delimiter))]
    twice = [name for name in columns if header.count(name) > 1]
    if twice:
        raise DataError(f"{path}: the header names column {twice[0]!r} twice; which one is meant?")
    missing = [name for name in columns if name not in header]
    if missing:
        raise DataError(
            f"{path}: header lacks column(s) {', '.join(map(repr, missing))} "
            f"(found {', '.join(map(repr, header))})"
        )
    usecols = [header.index(name) for name in columns]
    _check_field_counts(path, delimiter, len(header))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            values = np.loadtxt(
                path,
                dtype=str,
                delimiter=delimiter,
                skiprows=1,
                usecols=usecols,
                ndmin=2,
                quotechar='"',
                encoding="utf-8",
                comments=None,
            )
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text table") from None
    except ValueError as error:
        raise DataError(f"{path}: malformed table ({_first_line(error)})") from None
    if values.shape[0] == 0:
        values = np.empty((0, len(columns)), dtype=str)
    return {name: values[:, position] for position, name in enumerate(columns)}


def _check_field_counts(path: Path, delimiter: str, expected: int) -> None:
    """Refuse a row whose field count differs from the header's.

    np.loadtxt with usecols reads only the asked-for fields, so a row with an unquoted delimiter
    in an earlier field would silently shift its ids. The csv module reads the same quoting
    (doubled quotes, delimiters and newlines inside quotes) and skips empty lines as loadtxt does.
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # long free-text columns (reviews, titles) are fine
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter, quotechar='"')
            next(reader, None)
            for row in reader:
                if row and len(row) != expected:
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header has "
                        f"{expected} (an unquoted {delimiter!r} inside a field?)"
                    )
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text table") from None
    except csv.Error as error:
        raise DataError(f"{path}: malformed table ({_first_line(error)})") from None
    finally:
        csv.field_size_limit(limit)


def read_parquet_features(
    path: PathLike, item_col: str = "item", vector_col: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a Parquet feature table -> (item ids str [n], float32 vectors [n, dim])."""
    path = Path(path)
    pa, pq = _pyarrow(path)
    table = _open_parquet(path, pq)
    names = table.column_names
    if item_col not in names:
        raise DataError(f"{path}: no item column {item_col!r} (found {', '.join(names)})")
    if vector_col is None:
        lists = [
            field.name
            for field in table.schema
            if pa.types.is_list(field.type)
            or pa.types.is_large_list(field.type)
            or pa.types.is_fixed_size_list(field.type)
        ]
        if len(lists) != 1:
            raise DataError(
                f"{path}: expected exactly one list (vector) column, found "
                f"{len(lists)}{': ' + ', '.join(lists) if lists else ''}; name it with vector_col"
            )
        vector_col = lists[0]
    elif vector_col not in names:
        raise DataError(f"{path}: no vector column {vector_col!r} (found {', '.join(names)})")
    column = table.column(vector_col).combine_chunks()
    if not (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        raise DataError(f"{path}: column {vector_col!r} is {column.type}, not a list of numbers")
    if column.null_count:
        raise DataError(f"{path}: column {vector_col!r} has {column.null_count} null vectors")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = np.diff(np.asarray(column.offsets))
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(
                f"{path}: column {vector_col!r}: vectors must all have one length (a 2-D "
                f"table); row 0 has {int(lengths[0])} values, row {row} has {int(lengths[row])}"
            )
        dim = int(lengths[0]) if len(lengths) else 0
    values = column.flatten()
    if values.null_count:
        raise DataError(f"{path}: column {vector_col!r} has {values.null_count} null values")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise DataError(f"{path}: column {vector_col!r} holds {values.type}, not numbers")
    vectors = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dim)
    ids = np.char.strip(_arrow_to_str(table.column(item_col), path, item_col))
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: item {str(unique[counts > 1][0])!r} has {int(counts[counts > 1][0])} feature rows"
        )
    return ids, vectors


def _read_parquet_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    _, pq = _pyarrow(path)
    table = _open_parquet(path, pq)
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: lacks column(s) {', '.join(map(repr, missing))} "
            f"(found {', '.join(map(repr, table.column_names))})"
        )
    return {name: _arrow_to_str(table.column(name), path, name) for name in columns}


def _arrow_to_str(column, path: Path, name: str) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{path}: column {name!r} has {column.null_count} missing values")
    array = column.to_numpy()
    if array.dtype.kind == "f":
        raise DataError(f"{path}: column {name!r} holds floats ({column.type}); expected ids")
    return array.astype(str)


def _open_parquet(path: Path, pq):
    try:
        return pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for damaged files
        raise DataError(f"{path}: unreadable Parquet file ({_first_line(error)})") from None


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow (pip install 'rearm[parquet]')"
        ) from None
    return pa, pq


def _parse_ids(values: np.ndarray, path: Path, column: str) -> np.ndarray:
    """Non-negative integer ids from a str column, or a DataError naming the first bad value."""
    values = np.char.strip(values)
    body = np.char.lstrip(values, "-")
    digits = ascii_digits(body) & (np.char.str_len(values) - np.char.str_len(body) <= 1)
    if not digits.all():
        raise DataError(
            f"{path}: column {column!r}: non-integer value {str(values[~digits][0])!r} in "
            f"{int((~digits).sum())} rows"
        )
    long = np.char.str_len(np.char.lstrip(body, "0")) > 18
    if long.any():
        raise DataError(
            f"{path}: column {column!r}: id {str(values[long][0])!r} is too large (more than 18 "
            "digits); ids are indices from 0"
        )
    ids = values.astype(np.int64) if len(values) else np.empty(0, dtype=np.int64)
    if (ids < 0).any():
        raise DataError(f"{path}: column {column!r}: negative id {int(ids.min())}")
    return ids


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = path.read_bytes()
    if b"\0" in data:
        raise DataError(f"{path}: binary data, expected text with one id per line")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _discover_features(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for candidate in sorted(folder.iterdir()):
        suffix = candidate.suffix.lower()
        if suffix not in suffixes or not candidate.stem.endswith(FEATURE_SUFFIX):
            continue
        name = candidate.stem[: -len(FEATURE_SUFFIX)]
        if not name:
            raise DataError(f"{candidate}: feature file without a modality name")
        if name in found:
            raise DataError(
                f"{folder}: modality {name!r} has two feature files "
                f"({found[name].name}, {candidate.name}); keep one"
            )
        found[name] = candidate
    return found


def _as_paths(features: Mapping[str, PathLike] | None) -> dict[str, Path]:
    result = {}
    for name, value in (features or {}).items():
        if not isinstance(name, str) or not name:
            raise DataError(f"features: modality name must be a non-empty string, got {name!r}")
        result[name] = Path(value)
    return result


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
