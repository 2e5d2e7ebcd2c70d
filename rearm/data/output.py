"""Where `fetch` and `prepare` write: a folder that is missing, empty or (with force) an earlier
data set, built aside and moved into place only once complete (rearm.io.staged_folder)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from rearm.data.readers import detect_format
from rearm.errors import DataError
from rearm.io import staged_folder

RECORD_FILES = ("source.json", "prepare.json")


def holds_data_set(folder: Path) -> bool:
    """True for a folder that rearm wrote (source.json / prepare.json) or can read."""
    if any((folder / name).exists() for name in RECORD_FILES):
        return True
    try:
        detect_format(folder)
    except DataError:
        return False
    return True


def check_output_folder(out: Path, force: bool) -> None:
    """Refuse a target that is a file, a non-empty folder holding no data set (never replaced,
    even with force), or a data set without `force`."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not holds_data_set(out):
            raise DataError(f"{out}: folder is not empty and holds no data set; choose another")
        if not force:
            raise DataError(f"{out}: already holds a data set; pass --force to replace it")


def output_folder(out: Path, force: bool) -> AbstractContextManager[Path]:
    """The staging folder context (see rearm.io.staged_folder) for `out`."""
    check_output_folder(out, force)
    return staged_folder(out, replace=lambda folder: force and holds_data_set(folder))
