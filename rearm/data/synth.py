"""The synthetic default data set: a deterministic planted generator, and the REARM-layout writer.

Planted structure (what REARM assumes about real data):
  * item factors V = [shared | unique_1 | ... | unique_M | hidden]: the shared block is visible in
    every modality, unique_m only in modality m, and the hidden block in no modality (taste that
    content cannot explain, only collaborative signal can);
  * modality m = a nonlinear noisy random projection of [shared | unique_m], in the style of its
    position (cycling for more than four): 1st image-like (ReLU activations, non-negative and
    sparse like CNN features), 2nd text-like (L2-normalised tanh, like sentence embeddings), 3rd
    audio-like (a dense Gaussian projection, standardised per dimension), 4th video-like (ReLU of
    another projection, mean-pooled over a few noisy frames);
  * a pure-noise modality (NAME:DIM:noise) gets no unique block: its table is its style applied
    to fresh random latents that no item factor, user or interaction depends on;
  * each user has factors over all blocks; interactions are a Gumbel top-n draw over
    affinity / temperature + a log-normal item popularity bias, n varying per user;
  * each user's items are split at random into train / valid / test, at least one of each.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rearm.data.dataset import SPLITS, Dataset
from rearm.data.output import DERIVED_RECORDS, holds_data_set, is_own_entry
from rearm.errors import DataError
from rearm.io import atomic_open, staged_folder, write_json

DEFAULT_MODALITIES = {"image": 256, "text": 64}
STYLES = ("image", "text", "audio", "video")  # by position, cycling
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_USER_BLOCK = 4096
# Catalogs above _POOLED_ABOVE items: each block of _POOL_BLOCK users draws from its own random
# pool of _CANDIDATE_POOL items (industrial-scale runs; see _draw_interactions).
_POOLED_ABOVE = 32768
_CANDIDATE_POOL = 8192
_POOL_BLOCK = 512
_VIDEO_FRAMES = 4
RECIPE_PREFIX = "synthetic"
_RECIPE_KEYS = {"users": "num_users", "items": "num_items", "seed": "seed"}


def parse_modality_spec(spec: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Parse "image:256,text:64,video:128:noise" -> ({"image": 256, "text": 64, "video": 128},
    ("video",)): NAME:DIM, with a `:noise` suffix for a pure-noise modality; DataError otherwise."""
    result: dict[str, int] = {}
    noise: list[str] = []
    if not spec or not spec.strip():
        raise DataError("--modalities: empty; expected NAME:DIM[,NAME:DIM...], e.g. image:256")
    for part in spec.split(","):
        part = part.strip()
        fields = [field.strip() for field in part.split(":")]
        kind = fields[2] if len(fields) == 3 else ""
        name, dim = (fields + [""])[:2]
        if len(fields) not in (2, 3) or not _NAME.match(name) or not dim.isdigit():
            raise DataError(
                f"--modalities: bad entry {part!r}; expected NAME:DIM[:noise] with NAME a letter "
                "then letters, digits, _ or -, and DIM a positive integer (e.g. image:256,text:64)"
            )
        if len(fields) == 3 and kind != "noise":
            raise DataError(
                f"--modalities: bad entry {part!r}; the only third field is `noise` "
                f"(a pure-noise modality), got {kind!r}"
            )
        if int(dim) < 1:
            raise DataError(f"--modalities: dimension of {name!r} must be >= 1, got {dim}")
        if name in result:
            raise DataError(f"--modalities: modality {name!r} given twice")
        result[name] = int(dim)
        if kind:
            noise.append(name)
    return result, tuple(noise)


def parse_modalities(spec: str) -> dict[str, int]:
    """Parse "image:256,text:64" -> {"image": 256, "text": 64}; strict, DataError otherwise (a
    `:noise` suffix too: use `parse_modality_spec`, which also returns the noise modalities)."""
    dims, noise = parse_modality_spec(spec)
    if noise:
        raise DataError(
            f"--modalities: {noise[0]!r} is marked noise; parse it with parse_modality_spec"
        )
    return dims


def is_synthetic_recipe(data: str | None) -> bool:
    """Whether a `data` value names a generated data set ("synthetic" or "synthetic:...")."""
    return isinstance(data, str) and (data == RECIPE_PREFIX or data.startswith(RECIPE_PREFIX + ":"))


def parse_synthetic_recipe(text: str, defaults: Mapping | None = None) -> dict:
    """A data recipe "synthetic[:KEY=VALUE[;KEY=VALUE...]]" -> make_synthetic keywords.

    Keys: users, items, seed (integers) and modalities (a `parse_modality_spec` string, e.g.
    synthetic:modalities=image:256,text:64,audio:96,video:128:noise). `defaults` (make_synthetic
    keywords) fill the keys not given. The same text always gives the same data set, so a recipe
    can stand wherever a data path can (`rearm train --data`, a study's `data` list)."""
    if not is_synthetic_recipe(text):
        raise DataError(f"{text!r}: not a synthetic data recipe (synthetic[:KEY=VALUE;...])")
    keywords = dict(defaults or {})
    body = text[len(RECIPE_PREFIX) + 1 :]
    seen = set()
    for part in filter(None, (p.strip() for p in body.split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        known = ", ".join([*_RECIPE_KEYS, "modalities"])
        if not sep or key not in (*_RECIPE_KEYS, "modalities"):
            raise DataError(
                f"data {text!r}: bad entry {part!r}; expected KEY=VALUE with KEY in {known}"
            )
        if key in seen:
            raise DataError(f"data {text!r}: {key} given twice")
        seen.add(key)
        if key == "modalities":
            dims, noise = parse_modality_spec(value)
            keywords["modalities"], keywords["noise_modalities"] = dims, noise
        elif not value.isdigit():
            raise DataError(f"data {text!r}: {key} must be a non-negative integer, got {value!r}")
        else:
            keywords[_RECIPE_KEYS[key]] = int(value)
    return keywords


def make_synthetic(
    num_users: int = 2000,
    num_items: int = 1000,
    modalities: Mapping[str, int] | None = None,
    seed: int = 2025,
    *,
    noise_modalities: Sequence[str] = (),
    interactions_per_user: int = 25,
    shared_factors: int = 8,
    unique_factors: int = 4,
    hidden_factors: int = 4,
    feature_noise: float = 0.5,
    temperature: float = 0.35,
    popularity_skew: float = 0.8,
    heldout_fraction: float = 0.1,
    misalignment: float = 0.0,
    misaligned_modality: str | None = None,
) -> Dataset:
    """Generate a planted multi-modal data set (deterministic in `seed`).

    Args:
        num_users, num_items: sizes.
        modalities: {name: dim}; default {"image": 256, "text": 64}. Each is styled by its
            position (STYLES: image-, text-, audio-, video-like, cycling).
        noise_modalities: names among `modalities` that are pure noise (their style applied to
            random latents independent of everything else; they take no unique factor block).
        interactions_per_user: mean interactions per user; each user gets between half and
            1.5 times this (at least 3: one train, one valid, one test).
        shared_factors, unique_factors, hidden_factors: latent block sizes (unique per modality).
        feature_noise: std of the noise added to each modality's projection (signal std ~1).
        temperature: lower = users follow their factors more sharply.
        popularity_skew: std of the log-normal item popularity bias.
        heldout_fraction: fraction of each user's items in valid and in test (>= 1 each).
        misalignment: fraction P of items whose `misaligned_modality` features are generated
            from another (random) item's latent factors (see `_misaligned_rows`); recorded in
            `notes["misalignment"]`. 0 leaves the data set exactly as without it.
        misaligned_modality: default the first modality.

    Returns:
        Dataset (format "synthetic") with train / valid / test CSR [num_users, num_items] and
        features {name: float32 [num_items, dim]}.
    """
    modalities = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    noise_modalities = tuple(noise_modalities)
    check_seed(seed)
    _check_arguments(num_users, num_items, modalities, interactions_per_user, heldout_fraction)
    misaligned = _misaligned_rows(num_items, misalignment, seed)
    misaligned_modality = misaligned_modality or next(iter(modalities))
    if misaligned_modality not in modalities:
        raise DataError(f"--misaligned-modality: no modality {misaligned_modality!r}")
    unknown = [name for name in noise_modalities if name not in modalities]
    if unknown:
        raise DataError(f"noise_modalities: {unknown[0]!r} is not one of the modalities")
    rng = np.random.default_rng(seed)
    informative = [name for name in modalities if name not in noise_modalities]
    num_factors = shared_factors + unique_factors * len(informative) + hidden_factors

    item_factors = rng.standard_normal((num_items, num_factors))
    user_factors = rng.standard_normal((num_users, num_factors)) / np.sqrt(num_factors)
    popularity = popularity_skew * rng.standard_normal(num_items)

    features = {}
    for position, (name, dim) in enumerate(modalities.items()):
        if name in noise_modalities:
            visible = rng.standard_normal((num_items, shared_factors + unique_factors))
        else:
            start = shared_factors + unique_factors * informative.index(name)
            visible = np.hstack(
                [item_factors[:, :shared_factors], item_factors[:, start : start + unique_factors]]
            )
        if name == misaligned_modality and len(misaligned[0]):
            visible[misaligned[0]] = visible[misaligned[1]]
        style = STYLES[position % len(STYLES)]
        features[name] = _render(rng, style, visible, dim, feature_noise).astype(np.float32)

    # Fewer items than requested interactions: every user takes (nearly) every item.
    low = max(3, min(interactions_per_user // 2, num_items))
    high = max(low, min(num_items, (3 * interactions_per_user) // 2))
    per_user = rng.integers(low, high + 1, size=num_users)
    pairs = _draw_interactions(
        rng, user_factors, item_factors, popularity, temperature, per_user, num_items
    )
    split_of = _assign_splits(rng, per_user, heldout_fraction)
    users, items = pairs
    split_pairs = {
        name: np.stack([users[split_of == code], items[split_of == code]])
        for code, name in enumerate(SPLITS)
    }
    dataset = Dataset.from_pairs(
        split_pairs,
        features,
        num_users=num_users,
        num_items=num_items,
        source=f"synthetic(seed={seed})",
        format="synthetic",
    )
    if misalignment:
        dataset.notes["misalignment"] = {
            "modality": misaligned_modality,
            "fraction": float(misalignment),
            "items": misaligned[0].tolist(),
            "donors": misaligned[1].tolist(),
        }
    return dataset


def check_seed(seed, label: str = "--seed", error: type[Exception] = DataError) -> int:
    """`seed` if it is an integer >= 0 (what numpy's generators take), else `error`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise error(f"{label}: must be an integer >= 0, got {seed!r}")
    return int(seed)


def share_count(fraction: float, num_items: int) -> int:
    """P * n rounded half up (0.5 -> 1, 2.5 -> 3), with P taken as the decimal it is written as:
    in floats 0.145 * 100 is 14.499999999999998, which would round down to 14, not 15."""
    exact = Fraction(repr(float(fraction))) * int(num_items)
    return int(math.floor(exact + Fraction(1, 2)))


def _misaligned_rows(num_items: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, donors): round-half-up(fraction * num_items) items, each paired with a random other
    item whose latent factors its misaligned modality shows. A generator of its own (seeded by
    (seed, 13)) keeps every other draw of `make_synthetic` identical to the aligned data set."""
    if isinstance(fraction, bool) or not 0.0 <= float(fraction) <= 1.0:
        raise DataError(f"--misalignment: must be in [0, 1], got {fraction!r}")
    count = share_count(fraction, num_items)
    rng = np.random.default_rng([seed, 13])
    items = np.sort(rng.choice(num_items, size=count, replace=False))
    # a uniform other item: draw from n - 1 and skip the item itself
    donors = rng.integers(0, num_items - 1, size=count)
    donors += donors >= items
    return items.astype(np.int64), donors.astype(np.int64)


def _render(
    rng: np.random.Generator, style: str, visible: np.ndarray, dim: int, noise: float
) -> np.ndarray:
    """One modality's table [items, dim] from its visible latents, in `style` (see STYLES)."""
    items, width = visible.shape
    projection = rng.standard_normal((width, dim)) / np.sqrt(width)
    signal = visible @ projection + noise * rng.standard_normal((items, dim))
    if style == "image":
        return np.maximum(signal, 0.0)
    if style == "text":
        table = np.tanh(signal)
        return table / (np.linalg.norm(table, axis=1, keepdims=True) + 1e-12)
    if style == "audio":
        return (signal - signal.mean(axis=0)) / (signal.std(axis=0) + 1e-12)
    # video: frames share the projection and differ in their noise; clips are mean-pooled
    frames = [signal] + [
        visible @ projection + noise * rng.standard_normal((items, dim))
        for _ in range(_VIDEO_FRAMES - 1)
    ]
    return np.mean([np.maximum(frame - 0.5, 0.0) for frame in frames], axis=0)


def _check_arguments(
    num_users: int,
    num_items: int,
    modalities: dict[str, int],
    interactions_per_user: int,
    heldout_fraction: float,
) -> None:
    if int(num_users) < 1:
        raise DataError(f"--users: must be >= 1, got {num_users}")
    if int(num_items) < 3:
        raise DataError(f"--items: must be >= 3 (one train, valid and test item), got {num_items}")
    if not modalities:
        raise DataError("--modalities: at least one modality is needed")
    for name, dim in modalities.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(f"--modalities: bad modality name {name!r}")
        if int(dim) < 1:
            raise DataError(f"--modalities: dimension of {name!r} must be >= 1, got {dim}")
    if int(interactions_per_user) < 3:
        raise DataError(f"interactions_per_user: must be >= 3, got {interactions_per_user}")
    if not 0.0 <= heldout_fraction < 0.5:
        raise DataError(f"heldout_fraction: must be in [0, 0.5), got {heldout_fraction}")


def _draw_interactions(
    rng: np.random.Generator,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    popularity: np.ndarray,
    temperature: float,
    per_user: np.ndarray,
    num_items: int,
) -> np.ndarray:
    """Gumbel top-n per user (sampling n items without replacement from softmax(logits)),
    in user blocks so memory is O(block x items). Returns (2, sum(per_user)) int64 pairs,
    grouped by user.

    Catalogs of more than _POOLED_ABOVE items (industrial-scale runs) draw each block of
    _POOL_BLOCK users from a fresh uniform random pool of _CANDIDATE_POOL items (the same softmax
    restricted to the pool), so time and memory are O(users x pool) instead of O(users x items)
    (400,000 x 230,000 would be 92e9 Gumbel draws); smaller catalogs are drawn over every item,
    unchanged."""
    users_out, items_out = [], []
    most = int(per_user.max())
    pooled = num_items > _POOLED_ABOVE
    block_size = _POOL_BLOCK if pooled else _USER_BLOCK
    for start in range(0, len(user_factors), block_size):
        block = user_factors[start : start + block_size]
        pool = np.sort(rng.choice(num_items, _CANDIDATE_POOL, replace=False)) if pooled else None
        candidates = item_factors if pool is None else item_factors[pool]
        logits = (block @ candidates.T) / temperature
        logits += popularity if pool is None else popularity[pool]
        logits += rng.gumbel(size=logits.shape)
        top = np.argpartition(-logits, most - 1, axis=1)[:, :most]
        order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        if pool is not None:
            top = pool[top]
        keep = np.arange(most) < per_user[start : start + len(block), None]
        rows = np.broadcast_to(np.arange(start, start + len(block))[:, None], top.shape)
        users_out.append(rows[keep])
        items_out.append(top[keep])
    return np.stack([np.concatenate(users_out), np.concatenate(items_out)]).astype(np.int64)


def _assign_splits(
    rng: np.random.Generator, per_user: np.ndarray, heldout_fraction: float
) -> np.ndarray:
    """Split code (0 train, 1 valid, 2 test) for each pair of `_draw_interactions`' output: a
    random rank within the user decides, so each user gets >= 1 valid, >= 1 test, >= 1 train."""
    heldout = np.maximum(1, np.round(heldout_fraction * per_user)).astype(np.int64)
    owner = np.repeat(np.arange(len(per_user)), per_user)
    # A random permutation within each user: sort by (user, random key).
    order = np.lexsort((rng.random(len(owner)), owner))
    first = np.repeat(np.cumsum(per_user) - per_user, per_user)
    rank = np.empty(len(owner), dtype=np.int64)
    rank[order] = np.arange(len(owner)) - first
    user_heldout = heldout[owner]
    return np.where(rank < user_heldout, 2, np.where(rank < 2 * user_heldout, 1, 0))


def dataset_to_pairs(dataset: Dataset) -> dict[str, np.ndarray]:
    """{split: int64 (2, N) pairs, sorted by user then item} from the CSR splits."""
    result = {}
    for name in SPLITS:
        matrix: sp.csr_matrix = dataset.split(name)
        users = np.repeat(np.arange(dataset.num_users, dtype=np.int64), np.diff(matrix.indptr))
        result[name] = np.stack([users, matrix.indices.astype(np.int64)])
    return result


def write_rearm_layout(
    dataset: Dataset,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    records: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write `dataset` as a REARM-layout folder: {train,valid,test}.npy (int64 (2, N)),
    `<name>_feat.npy` (float32 [num_items, dim]) and `records` ({file name: JSON object}, e.g.
    synth's misalignment.json).

    The files are written in a hidden sibling folder first, so a failure (a full disk, Ctrl-C)
    leaves `out_dir` as it was. `out_dir` may be missing, empty, or a REARM data set (splits,
    features and the records of synth, corrupt and add-modality only): it is then replaced
    whole, so no stale feature table or record can join the new data set. Any other non-empty
    folder is refused with a DataError unless `force`: a folder that holds only a data set rearm
    wrote (e.g. a prepared one) is then replaced whole too; into one with other files the new
    files are moved, rearm's files that the new data set lacks are removed and the others are
    kept. Returns the paths written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    existing = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if existing and not force and not _is_rearm_layout(existing):
        shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise DataError(
            f"{out}: folder is not empty and is not a REARM data set (holds {shown}); "
            "choose another folder or pass --force (force=True) to write into it"
        )
    arrays = {f"{name}.npy": pairs for name, pairs in dataset_to_pairs(dataset).items()}
    for name, table in dataset.features.items():
        if not _NAME.match(name):
            raise DataError(f"{out}: modality name {name!r} cannot be a file name")
        arrays[f"{name}_feat.npy"] = np.ascontiguousarray(table, dtype=np.float32)
    records = dict(records or {})
    for name in records:
        if not name.endswith(".json") or Path(name).name != name or name in arrays:
            raise DataError(f"{out}: record name {name!r} must be a plain <name>.json file name")
    names = [*arrays, *records]
    if not existing or _is_rearm_layout(existing) or holds_data_set(out):
        with staged_folder(out, replace=lambda _: True) as stage:
            _write_files(stage, arrays, records)
        return [out / name for name in names]
    # force into a folder with files of its own: build aside, then move each file in
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        _write_files(stage, arrays, records)
        for name in names:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for stale in existing:
        if stale not in names and is_own_entry(stale):
            path = out / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return [out / name for name in names]


def _write_files(folder: Path, arrays: Mapping[str, np.ndarray], records: Mapping[str, object]):
    for file_name, array in arrays.items():
        with atomic_open(folder / file_name, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    for file_name, record in records.items():
        write_json(folder / file_name, record)


def _is_rearm_layout(names: list[str]) -> bool:
    """Only splits, feature tables and the records of derived data sets (what synth replaces
    without force)."""
    split_files = {f"{name}.npy" for name in SPLITS}
    return split_files <= set(names) and all(
        name in split_files or name.endswith("_feat.npy") or name in DERIVED_RECORDS
        for name in names
    )
