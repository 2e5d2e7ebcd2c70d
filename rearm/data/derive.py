"""A derived modality: a noisy copy of an existing table at another width, so a real data set can
be given a third (or further) modality honestly, with nothing in it that the source table does not
already hold (`rearm data add-modality`).

new = standardise(source @ R) + noise * N(0, 1), with R a fixed Gaussian [D_source, dim] /
sqrt(D_source) and the noise drawn from the same seeded generator; the result is written as a new
REARM-layout folder (the interactions and every table of the source, plus the new one) with a
`modality.json` manifest, into a temporary folder renamed into place at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rearm.data.dataset import Dataset
from rearm.data.synth import _NAME, check_seed, write_rearm_layout
from rearm.errors import DataError

MANIFEST = "modality.json"


def derive_modality(
    dataset: Dataset, source: str, name: str, dim: int, noise: float = 0.5, seed: int = 0
) -> np.ndarray:
    """float32 [num_items, dim]: `source`'s table through a fixed random projection to `dim`,
    standardised per dimension, plus Gaussian noise of std `noise` (deterministic in `seed`)."""
    if source not in dataset.features:
        raise DataError(
            f"--from: no modality {source!r} (the data set has: "
            f"{', '.join(dataset.features) or 'none'})"
        )
    if not isinstance(name, str) or not _NAME.match(name):
        raise DataError(f"--name: {name!r} is not a modality name (a letter, then letters, digits)")
    if name in dataset.features:
        raise DataError(f"--name: the data set already has a modality {name!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise DataError(f"--dim: must be an integer >= 1, got {dim!r}")
    if not np.isfinite(noise) or noise < 0:
        raise DataError(f"--noise: must be a finite number >= 0, got {noise!r}")
    table = np.asarray(dataset.features[source], dtype=np.float32)
    rng = np.random.default_rng(check_seed(seed))
    projection = rng.standard_normal((table.shape[1], dim), dtype=np.float32)
    projection /= np.sqrt(table.shape[1])
    signal = table @ projection
    signal = (signal - signal.mean(axis=0)) / (signal.std(axis=0) + 1e-6)
    signal += noise * rng.standard_normal(signal.shape, dtype=np.float32)
    return signal.astype(np.float32)


def add_modality(
    source_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str,
    name: str,
    dim: int,
    noise: float = 0.5,
    seed: int = 0,
    dataset: Dataset | None = None,
) -> dict:
    """Write `source_path`'s data set plus the derived modality `name` to `out` (REARM layout and
    modality.json); returns the manifest. `out` must be missing or empty."""
    from rearm.data.readers import load_dataset

    out = Path(out)
    check_seed(seed)  # before the data set is read
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out}: exists and is not an empty folder")
    dataset = dataset if dataset is not None else load_dataset(source_path)
    table = derive_modality(dataset, source, name, dim, noise, seed)
    features = {**{k: np.asarray(v) for k, v in dataset.features.items()}, name: table}
    derived = Dataset(
        num_users=dataset.num_users,
        num_items=dataset.num_items,
        train=dataset.train,
        valid=dataset.valid,
        test=dataset.test,
        features=features,
    )
    manifest = {
        "source": str(source_path),
        "source_fingerprint": dataset.fingerprint(),
        "modality": name,
        "derived_from": source,
        "dim": dim,
        "noise": noise,
        "seed": seed,
        "recipe": f"standardise({source} @ R) + {noise:g} * N(0, 1), R ~ N(0, 1 / D_{source})",
        "fingerprint": derived.fingerprint(),
    }
    # built aside and moved into place whole (out was checked to be missing or empty)
    write_rearm_layout(derived, out, records={MANIFEST: manifest})
    return manifest
