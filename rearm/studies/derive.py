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

from rearm.data.corrupt import MANIFEST, corrupt_dataset, corrupt_features
from rearm.data.dataset import Dataset
from rearm.errors import DataError
from rearm.studies.spec import StudySpec, data_label

DATA_DIR = "data"


def derived_name(source: str | None, corruption: dict, fraction: float) -> str:
    return f"{data_label(source)}-{corruption['mode']}-{corruption['modality']}-{fraction:g}"


def derive_corrupted(
    spec: StudySpec, out: Path, line: Callable[[str], None], *, write: bool = True
) -> tuple[StudySpec, dict[str, Dataset], dict[str, dict]]:
    """(spec with `data` = the derived folders, {folder: Dataset} for fingerprinting,
    {folder: {source, fraction, modality, mode, seed}} for study.json). `write=False` (a dry
    run) derives in memory only. A synthetic-default source keeps its "synthetic" preset."""
    from rearm.experiments.run import load_run_data
    from rearm.models.presets import SYNTHETIC_PRESET

    corruption = spec.corruption or {}
    folders: list[str] = []
    datasets: dict[str, Dataset] = {}
    derived: dict[str, dict] = {}
    for source in spec.data:
        line(f"reading {source or 'the synthetic default data set'}")
        dataset = load_run_data(source)
        fingerprint = dataset.fingerprint()
        for fraction in corruption["fractions"]:
            folder = out.resolve() / DATA_DIR / derived_name(source, corruption, fraction)
            request = {
                "modality": corruption["modality"],
                "mode": corruption["mode"],
                "fraction": fraction,
                "seed": corruption["seed"],
            }
            where = f"corruption of {source or 'the synthetic default'} at {fraction:g}"
            try:
                if not write:
                    result, _ = corrupt_features(dataset, **request)
                elif _reusable(folder, fingerprint, request):
                    result = load_run_data(str(folder))
                else:
                    if folder.exists():
                        shutil.rmtree(folder)
                    line(f"deriving {folder} ({request['mode']} {request['modality']})")
                    corrupt_dataset(dataset, folder, **request)
                    result = load_run_data(str(folder))
            except DataError as error:
                raise DataError(f"study {spec.name}: {where}: {error}") from None
            folders.append(str(folder))
            datasets[str(folder)] = result
            derived[str(folder)] = {"source": source, "source_fingerprint": fingerprint, **request}
    preset = spec.preset
    if preset is None and all(source is None for source in spec.data):
        preset = SYNTHETIC_PRESET
    spec = dataclasses.replace(spec, data=tuple(folders), preset=preset)
    return spec, datasets, derived


def _reusable(folder: Path, fingerprint: str, request: dict) -> bool:
    """The folder's manifest records this source and request (its content is checked by the
    caller's fingerprint against the manifest's output fingerprint)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("source", {}).get("fingerprint") != fingerprint:
        return False
    if any(manifest.get(key) != value for key, value in request.items()):
        return False
    from rearm.experiments.run import load_run_data

    try:
        return load_run_data(str(folder)).fingerprint() == manifest["output"]["fingerprint"]
    except (DataError, KeyError, TypeError):
        return False
