"""Parse step: the raw Amazon review and metadata files, one record per line.

Formats (detected from the first record of each file; gzip detected from the magic bytes):

* reviews 2014 (McAuley, `reviews_<Cat>_5.json.gz`): strict JSON with `reviewerID`, `asin`,
  `unixReviewTime` (seconds);
* reviews 2023 (Amazon Reviews'23, `<Cat>.jsonl.gz`): JSON with `user_id`, `parent_asin`,
  `timestamp` (milliseconds); the item is the parent ASIN;
* meta 2014 (`meta_<Cat>.json.gz`): Python-literal dicts (single quotes), parsed with
  `ast.literal_eval`, never `eval`; strict-JSON lines are read as JSON;
* meta 2023 (`meta_<Cat>.jsonl.gz`): JSON keyed by `parent_asin`.

A malformed line is a DataError naming the file and line, unless `skip_bad_lines`, which counts
and skips it.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rearm.errors import DataError

REVIEW_FIELDS = {
    "2014": ("reviewerID", "asin", "unixReviewTime"),
    "2023": ("user_id", "parent_asin", "timestamp"),
}
TIME_UNITS = {"2014": "seconds", "2023": "milliseconds"}


@dataclass
class Reviews:
    """Review records as parallel arrays: user and item ids (str) and integer times."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    format: str
    lines: int
    bad_lines: list[int] = field(default_factory=list)


@dataclass
class Meta:
    """Item metadata: {item id: {"title", "brand", "categories", "description"}} (missing
    fields absent), the detected format and what was skipped."""

    items: dict[str, dict]
    format: str
    lines: int
    duplicates: int = 0
    bad_lines: list[int] = field(default_factory=list)


def read_reviews(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> Reviews:
    """Read a 2014 or 2023 review file (see the module docstring)."""
    path = Path(path)
    users, items, times, bad = [], [], [], []
    fmt = None
    lines = 0
    for number, line in _lines(path):
        lines += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            _bad(path, number, f"not JSON ({error.msg}, column {error.colno})", skip_bad_lines, bad)
            continue
        if not isinstance(record, dict):
            _bad(path, number, "a record must be a JSON object", skip_bad_lines, bad)
            continue
        if fmt is None:
            fmt = _review_format(record, path, number)
        user_field, item_field, time_field = REVIEW_FIELDS[fmt]
        problem = None
        for name in (user_field, item_field):
            if not isinstance(record.get(name), str) or not record[name].strip():
                problem = f"field {name!r} missing or not a non-empty string ({fmt} format)"
                break
        stamp = record.get(time_field)
        if problem is None and (isinstance(stamp, bool) or not isinstance(stamp, int)):
            problem = f"field {time_field!r} missing or not an integer ({fmt} format)"
        elif problem is None and not -(2**63) <= stamp < 2**63:
            problem = f"field {time_field!r}: {stamp} does not fit a 64-bit time stamp"
        if problem is not None:
            _bad(path, number, problem, skip_bad_lines, bad)
            continue
        users.append(record[user_field].strip())
        items.append(record[item_field].strip())
        times.append(stamp)
    if not users:
        raise DataError(f"{path}: no review records")
    return Reviews(
        users=np.array(users, dtype=str),
        items=np.array(items, dtype=str),
        times=np.array(times, dtype=np.int64),
        format=fmt,
        lines=lines,
        bad_lines=bad,
    )


def read_meta(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> Meta:
    """Read a 2014 or 2023 metadata file (see the module docstring)."""
    path = Path(path)
    items: dict[str, dict] = {}
    bad: list[int] = []
    duplicates = 0
    fmt = None
    lines = 0
    for number, line in _lines(path):
        lines += 1
        record = _parse_meta_line(line)
        if not isinstance(record, dict):
            _bad(path, number, record, skip_bad_lines, bad)
            continue
        if fmt is None:
            fmt = "2023" if "parent_asin" in record else "2014"
        key = "parent_asin" if fmt == "2023" else "asin"
        item = record.get(key)
        if not isinstance(item, str) or not item.strip():
            _bad(
                path, number, f"field {key!r} missing or empty ({fmt} format)", skip_bad_lines, bad
            )
            continue
        item = item.strip()
        if item in items:
            duplicates += 1  # the first record of an item wins
            continue
        items[item] = item_fields(record)
    if fmt is None:
        raise DataError(f"{path}: no metadata records")
    return Meta(items=items, format=fmt, lines=lines, duplicates=duplicates, bad_lines=bad)


def item_fields(record: dict) -> dict:
    """The four text fields of a metadata record (2014 or 2023), normalised to strings / a list
    of category names; missing, empty or ill-typed fields are left out."""
    fields = {}
    title = _text(record.get("title"))
    if title:
        fields["title"] = title
    details = record.get("details") if isinstance(record.get("details"), dict) else {}
    for candidate in (record.get("brand"), details.get("Brand"), record.get("store")):
        brand = _text(candidate)
        if brand:
            fields["brand"] = brand
            break
    categories = []
    for name in _flatten(record.get("categories")):
        if name not in categories:
            categories.append(name)
    if categories:
        fields["categories"] = categories
    description = " ".join(_flatten(record.get("description")))
    if description:
        fields["description"] = description
    return fields


def _text(value) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _flatten(value) -> list[str]:
    if isinstance(value, str):
        text = _text(value)
        return [text] if text else []
    if isinstance(value, list | tuple):
        return [text for entry in value for text in _flatten(entry)]
    return []


def _parse_meta_line(line: str) -> dict | str:
    """The record, or the problem in words."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        return f"neither JSON nor a Python literal ({type(error).__name__})"


def _review_format(record: dict, path: Path, number: int) -> str:
    for fmt, (user_field, item_field, _) in REVIEW_FIELDS.items():
        if user_field in record and item_field in record:
            return fmt
    raise DataError(
        f"{path}:{number}: cannot tell the review format: expected reviewerID/asin/unixReviewTime "
        "(2014) or user_id/parent_asin/timestamp (2023)"
    )


def _bad(path: Path, number: int, problem: str, skip: bool, bad: list[int]) -> None:
    if not skip:
        raise DataError(f"{path}:{number}: {problem} (--skip-bad-lines to skip such lines)")
    bad.append(number)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the non-blank lines of a plain or gzip text file (UTF-8)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    raw = gzip.open(path, "rb") if gzipped else open(path, "rb")
    number = 0
    try:
        with raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
            while True:
                try:
                    line = text.readline()
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{number + 1}: not UTF-8 text") from None
                if not line:
                    return
                number += 1
                if line.strip():
                    yield number, line
    except (OSError, EOFError) as error:  # a damaged or truncated gzip stream
        raise DataError(f"{path}:{number + 1}: unreadable ({error})") from None
