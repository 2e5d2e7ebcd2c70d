"""Data sets a study derives from its own spec: with a `corruption` entry, each data set of the
spec is replaced by one corrupted copy per fraction P (`rearm.data.corrupt`), written once under
STUDY_DIR/data/<source>-<mode>-<modality>-<P>/ with its corruption.json and reused by a resumed
study while that manifest and the folder's content still match (else rebuilt: the folder belongs
to the study). The copies are deterministic in the spec's corruption seed, so a cell's key (its
configuration and its data fingerprint) is the same on every machine.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from rearm.data.corrupt import MANIFEST, corrupt_features, write_corrupted
from rearm.data.dataset import Dataset
from rearm.errors import DataError
from rearm.studies.spec import StudySpec, data_label

DATA_DIR = "data"


def derived_name(source: str | None, corruption: dict, fraction: float) -> str:
    return f"{data_label(source)}-{corruption['mode']}-{corruption['modality']}-{fraction:g}"


@dataclasses.dataclass
class Derivation:
    """The copies a corruption study reads: `spec` with `data` = the derived folders,
    `datasets` {folder: Dataset} for fingerprinting, `meta` {folder: {source,
    source_fingerprint, fraction, modality, mode, seed}} for study.json, and `pending`
    {folder: (source Dataset, derived Dataset, manifest)}: the copies derived in memory that
    `write_derived` still has to write (folders that already hold a matching copy are read, not
    derived again)."""

    spec: StudySpec
    datasets: dict[str, Dataset]
    meta: dict[str, dict]
    pending: dict[str, tuple[Dataset, Dataset, dict]]


def derive_corrupted(spec: StudySpec, out: Path, line: Callable[[str], None]) -> Derivation:
    """Every copy of `spec`'s corruption entry, derived once, in memory: nothing is written, so
    the caller can check the whole study before `write_derived` writes the copies. A
    synthetic-default source keeps its "synthetic" preset."""
    from rearm.experiments.run import load_run_data
    from rearm.models.presets import SYNTHETIC_PRESET

    corruption = spec.corruption or {}
    folders: list[str] = []
    datasets: dict[str, Dataset] = {}
    meta: dict[str, dict] = {}
    pending: dict[str, tuple[Dataset, Dataset, dict]] = {}
    for source in spec.data:
        line(f"reading {source or 'the synthetic default data set'}")
        dataset = load_run_data(source)
        fingerprint = dataset.fingerprint()
        for fraction in corruption["fractions"]:
            folder = str(out.resolve() / DATA_DIR / derived_name(source, corruption, fraction))
            request = {
                "modality": corruption["modality"],
                "mode": corruption["mode"],
                "fraction": fraction,
                "seed": corruption["seed"],
            }
            reused = _reusable(Path(folder), fingerprint, request)
            if reused is None:
                where = f"corruption of {source or 'the synthetic default'} at {fraction:g}"
                try:
                    result, manifest = corrupt_features(dataset, **request)
                except DataError as error:
                    raise DataError(f"study {spec.name}: {where}: {error}") from None
                pending[folder] = (dataset, result, manifest)
            folders.append(folder)
            datasets[folder] = reused if reused is not None else result
            meta[folder] = {"source": source, "source_fingerprint": fingerprint, **request}
    preset = spec.preset
    if preset is None and all(source is None for source in spec.data):
        preset = SYNTHETIC_PRESET
    spec = dataclasses.replace(spec, data=tuple(folders), preset=preset)
    return Derivation(spec, datasets, meta, pending)


def write_derived(derivation: Derivation, line: Callable[[str], None]) -> None:
    """Write the pending copies of `derivation` (a stale folder of the study is replaced). The
    copies in `derivation.datasets` stay the in-memory ones: the layout round-trips exactly, so
    their fingerprints are those of the folders written (the manifest records the same)."""
    for folder, (dataset, result, manifest) in derivation.pending.items():
        path = Path(folder)
        if path.exists():
            shutil.rmtree(path)
        line(f"deriving {folder} ({manifest['mode']} {manifest['modality']})")
        write_corrupted(dataset, result, manifest, path)
    derivation.pending.clear()


def _reusable(folder: Path, fingerprint: str, request: dict) -> Dataset | None:
    """The folder's copy when its manifest records this source and request and its content
    still has the manifest's output fingerprint; None otherwise."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("source", {}).get("fingerprint") != fingerprint:
        return None
    if any(manifest.get(key) != value for key, value in request.items()):
        return None
    from rearm.experiments.run import load_run_data

    try:
        dataset = load_run_data(str(folder))
        return dataset if dataset.fingerprint() == manifest["output"]["fingerprint"] else None
    except (DataError, KeyError, TypeError):
        return None
