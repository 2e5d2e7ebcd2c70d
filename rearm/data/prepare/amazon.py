"""`prepare_amazon`: raw Amazon review + metadata files -> a REARM-layout data set.

parse (raw.py) -> deduplicate -> k-core -> map ids -> split by time (steps.py) -> encode text
(text.py) and images (image.py) -> write the folder, validated by the normal reader, with
`prepare.json` (inputs with SHA-256, counts after every step, split sizes, template, models).
"""

from __future__ import annotations

import csv
import errno
import io
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import rearm
from rearm.arrays import sorted_unique
from rearm.data.dataset import SPLITS
from rearm.data.describe import describe
from rearm.data.output import check_output_folder, output_folder
from rearm.data.prepare import image as image_step
from rearm.data.prepare import raw, steps
from rearm.data.prepare import text as text_step
from rearm.data.readers import load_dataset
from rearm.errors import DataError
from rearm.io import atomic_open, file_sha256, write_json

PREPARE_FILE = "prepare.json"
USER_MAP, ITEM_MAP = "u_id_mapping.csv", "i_id_mapping.csv"


def prepare_amazon(
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_features: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    image_model: str | os.PathLike | None = None,
    text_model: str | os.PathLike | None = None,
    text: bool = True,
    k: int = 5,
    split: str = "8:1:1",
    mmrec_name: str | None = None,
    skip_bad_lines: bool = False,
    force: bool = False,
    text_batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Prepare one Amazon category; returns prepare.json's content plus the card under "card".

    Args:
        reviews, meta: the raw files (2014 or 2023 formats, plain or gzip; see raw.py).
        image_features: the published `image_features_<Cat>.b` file, or
        images, image_model: a folder of `<item id>.<ext>` images and a model file (image.py).
        text_model: a sentence-transformers model folder (default: the packaged MiniLM).
        text: False skips text features.
        k: the k-core threshold; split: train:valid:test weights per user ("8:1:1").
        mmrec_name: also write `mmrec/<name>.inter` (+ links to the feature files).
        skip_bad_lines: count and skip malformed lines instead of failing.
        force: replace an existing data set folder at `out_dir`.
    """
    say = progress or (lambda line: None)
    out = Path(out_dir)
    ratios = steps.parse_ratios(split)
    if k < 1:
        raise DataError(f"--k-core: must be at least 1, got {k}")
    if images is not None and image_features is not None:
        raise DataError("--image-features and --images: give one image source, not both")
    if (images is None) != (image_model is None):
        raise DataError("--images and --image-model go together")
    if mmrec_name is not None and not mmrec_name.replace("-", "").replace("_", "").isalnum():
        raise DataError(f"--mmrec: {mmrec_name!r} is not a plain file name")
    check_output_folder(out, force)
    text_folder, text_name = text_step.resolve_text_model(text_model) if text else (None, None)
    started = time.perf_counter()

    say(f"reading {reviews}")
    parsed = raw.read_reviews(reviews, skip_bad_lines=skip_bad_lines)
    say(f"reading {meta}")
    metadata = raw.read_meta(meta, skip_bad_lines=skip_bad_lines)
    counts = [_count("reviews", parsed.users, parsed.items)]
    users, items, times = steps.deduplicate(parsed.users, parsed.items, parsed.times)
    counts.append(_count("one review per (user, item), earliest kept", users, items))
    keep, core_steps = steps.k_core(users, items, k)
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataError(f"{reviews}: nothing is left after the {k}-core filter")
    user_ids, user_index = steps.map_ids(users)
    item_ids, item_index = steps.map_ids(items)
    labels = steps.time_split(user_index, item_index, times, ratios)
    say(f"{len(user_ids):,} users, {len(item_ids):,} items, {len(users):,} interactions")

    features: dict[str, np.ndarray] = {}
    record_text = None
    if text:
        sentences = [text_step.item_sentence(metadata.items.get(item)) for item in item_ids]
        say(f"encoding {len(sentences):,} item texts with {text_name}")
        features["text"], info = text_step.encode_texts(
            sentences, text_folder, batch_size=text_batch_size, progress=say
        )
        record_text = {
            "model": text_name,
            "template": text_step.TEMPLATE,
            "items_without_text": int(sum(not sentence for sentence in sentences)),
            **info,
        }
    record_image = None
    if image_features is not None:
        say(f"reading image features {image_features}")
        features["image"], image_counts = image_step.read_published_features(
            image_features, item_ids
        )
        record_image = {"source": "published CNN features", **image_counts}
    elif images is not None:
        say(f"encoding images in {images} with {image_model}")
        features["image"], image_counts = image_step.encode_image_folder(
            images, image_model, item_ids, progress=say
        )
        record_image = {"source": "image folder", "model": str(image_model), **image_counts}

    inputs = {"reviews": reviews, "meta": meta}
    if image_features is not None:
        inputs["image_features"] = image_features
    if image_model is not None:
        inputs["image_model"] = image_model
    record = {
        "rearm": rearm.__version__,
        "python": platform.python_version(),
        "inputs": {
            name: {"path": str(path), "sha256": file_sha256(path)} for name, path in inputs.items()
        },
        "images_folder": str(images) if images is not None else None,
        "formats": {"reviews": parsed.format, "meta": metadata.format},
        "time_unit": raw.TIME_UNITS[parsed.format],
        "bad_lines": {
            "reviews": len(parsed.bad_lines),
            "meta": len(metadata.bad_lines),
            "first": {"reviews": parsed.bad_lines[:10], "meta": metadata.bad_lines[:10]},
        },
        "meta_duplicates": metadata.duplicates,
        "items_without_meta": int(sum(item not in metadata.items for item in item_ids)),
        "k_core": k,
        "counts": counts + core_steps,
        "split": {
            "ratios": split,
            "rule": "per user by (time, item index): the last round(n*test/total) (halves up) to "
            "test, the floor(n*valid/total) before them to valid, each >= 1, train keeps >= 1",
            **{name: int((labels == code).sum()) for code, name in enumerate(SPLITS)},
        },
        "text": record_text,
        "image": record_image,
    }
    try:
        with output_folder(out, force) as stage:
            _write(stage, user_index, item_index, labels, features, user_ids, item_ids, mmrec_name)
            dataset = load_dataset(stage, format="rearm")
            card = describe(dataset)
            record["seconds"] = round(time.perf_counter() - started, 3)
            write_json(stage / PREPARE_FILE, record)
    except OSError as error:
        problem = "disk full" if error.errno == errno.ENOSPC else "cannot write"
        raise DataError(f"{out}: {problem} ({error.strerror or error})") from None
    card["source"] = str(out)
    return {**record, "card": card}


def _write(stage, users, items, labels, features, user_ids, item_ids, mmrec_name) -> None:
    for code, name in enumerate(SPLITS):
        chosen = labels == code
        with atomic_open(stage / f"{name}.npy", "wb") as handle:
            np.save(handle, np.stack([users[chosen], items[chosen]]).astype(np.int64))
    for name, table in features.items():
        with atomic_open(stage / f"{name}_feat.npy", "wb") as handle:
            np.save(handle, np.ascontiguousarray(table, dtype=np.float32))
    _write_mapping(stage / USER_MAP, "user", "userID", user_ids)
    _write_mapping(stage / ITEM_MAP, "item", "itemID", item_ids)
    if mmrec_name is not None:
        folder = stage / "mmrec"
        folder.mkdir()
        order = np.lexsort((items, users))
        lines = ["userID\titemID\tx_label"]
        lines += [f"{users[r]}\t{items[r]}\t{labels[r]}" for r in order]
        with atomic_open(folder / f"{mmrec_name}.inter", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        for name in features:
            os.link(stage / f"{name}_feat.npy", folder / f"{name}_feat.npy")


def _write_mapping(path: Path, id_column: str, index_column: str, ids: np.ndarray) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([id_column, index_column])
    writer.writerows((str(value), index) for index, value in enumerate(ids))
    with atomic_open(path, "w") as handle:
        handle.write(buffer.getvalue())


def _count(step: str, users: np.ndarray, items: np.ndarray) -> dict:
    return {
        "filter": step,
        "users": int(len(sorted_unique(users))),
        "items": int(len(sorted_unique(items))),
        "interactions": int(len(users)),
    }


def read_id_mapping(path: str | os.PathLike) -> np.ndarray:
    """The ids of a `u_id_mapping.csv` / `i_id_mapping.csv` file (id, index columns; comma- or
    tab-separated, the latter as MMRec writes them), in index order."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = handle.readline()
            handle.seek(0)
            delimiter = "\t" if "\t" in header and "," not in header else ","
            rows = list(csv.reader(handle, delimiter=delimiter))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except (OSError, csv.Error) as error:
        raise DataError(f"{path}: unreadable id mapping ({error})") from None
    if len(rows) < 2 or len(rows[0]) != 2:
        raise DataError(f"{path}: expected a header (id, index) and one row per id")
    try:
        index = np.array([int(row[1]) for row in rows[1:]])
    except (ValueError, IndexError):
        raise DataError(f"{path}: the index column must hold integers") from None
    if not np.array_equal(np.sort(index), np.arange(len(index))):
        raise DataError(f"{path}: indices must be 0..n-1, each once")
    ids = np.empty(len(index), dtype=object)
    ids[index] = [row[0] for row in rows[1:]]
    ids = ids.astype(str)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: id {str(unique[counts > 1][0])!r} is mapped {int(counts[counts > 1][0])} "
            "times; each id needs one index"
        )
    return ids
