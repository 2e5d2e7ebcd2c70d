"""Where `fetch`, `prepare` and `synth` write: a folder that is missing, empty or (with force) an
earlier data set, built aside and moved into place only once complete (rearm.io.staged_folder).

A folder is replaced only when everything in it is a file rearm writes into a data set, so that
`--force` can never delete a user's own file that happens to sit beside a `train.npy`."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

from rearm.data.dataset import SPLITS
from rearm.data.readers import detect_format
from rearm.errors import DataError
from rearm.io import staged_folder

RECORD_FILES = ("source.json", "prepare.json")
# the provenance records of synth, corrupt and add-modality (the derived data sets)
DERIVED_RECORDS = ("misalignment.json", "corruption.json", "modality.json")
# what `prepare` writes beside the layout: the id maps and the MMRec copy
PREPARE_EXTRAS = ("u_id_mapping.csv", "i_id_mapping.csv", "mmrec")


def is_own_entry(name: str, fetched: frozenset[str] = frozenset()) -> bool:
    """True for a name rearm writes into a data set folder (`fetched`: the files a source.json
    lists as downloaded)."""
    return (
        name in {f"{split}.npy" for split in SPLITS}
        or name.endswith("_feat.npy")
        or name in RECORD_FILES
        or name in DERIVED_RECORDS
        or name in PREPARE_EXTRAS
        or name in fetched
    )


def foreign_entries(folder: Path) -> list[str]:
    """Sorted names in `folder` that rearm does not write into a data set."""
    fetched = frozenset(_fetched_names(folder / "source.json"))
    return sorted(p.name for p in folder.iterdir() if not is_own_entry(p.name, fetched))


def holds_data_set(folder: Path) -> bool:
    """True for a folder that holds a data set (one rearm wrote, with source.json / prepare.json,
    or one it can read) and nothing else."""
    if foreign_entries(folder):
        return False
    if any((folder / name).exists() for name in RECORD_FILES):
        return True
    try:
        detect_format(folder)
    except DataError:
        return False
    return True


def check_output_folder(out: Path, force: bool) -> None:
    """Refuse a target that is a file, a non-empty folder that holds anything but a data set
    (never replaced, even with force), or a data set without `force`."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not holds_data_set(out):
            foreign = foreign_entries(out)
            held = f"; it holds {_shown(foreign)}" if foreign else ""
            raise DataError(
                f"{out}: folder is not empty and holds no data set rearm can replace{held}; "
                "choose another folder"
            )
        if not force:
            raise DataError(f"{out}: already holds a data set; pass --force to replace it")


def output_folder(out: Path, force: bool) -> AbstractContextManager[Path]:
    """The staging folder context (see rearm.io.staged_folder) for `out`."""
    check_output_folder(out, force)
    return staged_folder(out, replace=lambda folder: force and holds_data_set(folder))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _fetched_names(path: Path) -> list[str]:
    try:
        files = json.loads(path.read_text()).get("files", [])
        return [str(entry["name"]) for entry in files]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return []
