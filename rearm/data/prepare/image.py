"""Encode step, images: the published CNN feature file, or a folder of item images encoded with a
user-supplied model file.

The published file (`image_features_<Cat>.b`, McAuley et al.) is a sequence of records, each a
10-byte ASCII ASIN followed by 4096 little-endian float32 values. Items without a record get the
mean vector of the items that have one (counted); an ASIN repeated in the file keeps its first
record (counted).

The image folder holds `<item id>.<jpg|jpeg|png|webp|gif|bmp>` files. The model file is either a
`torch.export` program (`.pt2`, from `torch.export.save`) or a TorchScript module (`.pt`, from
`torch.jit.save`), e.g. a torchvision CNN exported on a machine that has torchvision; it is loaded
with torch alone (no pickle, no download). Each image is converted to RGB, resized so that its
shorter side is 256 (bilinear), centre-cropped to 224 x 224, scaled to [0, 1] and normalised with
the ImageNet mean and standard deviation; the model maps [B, 3, 224, 224] to [B, dim] (larger
outputs are flattened). Decoding images needs Pillow (`pip install 'rearm[images]'`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rearm.errors import DataError

ASIN_BYTES = 10
PUBLISHED_DIM = 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224


def read_published_features(
    path: str | os.PathLike, item_ids: np.ndarray, *, dim: int = PUBLISHED_DIM
) -> tuple[np.ndarray, dict]:
    """Rows of the published binary feature file for `item_ids` -> (float32 [n, dim], counts).

    The file is memory-mapped and scanned once; items absent from it get the mean of the found
    rows. counts: {records, duplicates, found, missing}.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    record = np.dtype([("asin", f"S{ASIN_BYTES}"), ("vector", "<f4", (dim,))])
    size = path.stat().st_size
    if size == 0 or size % record.itemsize:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of records (10-byte ASIN + {dim} "
            f"float32 = {record.itemsize} bytes each); truncated or not an image feature file"
        )
    table = np.memmap(path, dtype=record, mode="r")
    try:
        asins = np.char.strip(table["asin"].astype("U10"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: ASIN fields are not ASCII; not an image feature file") from None
    unique, first = np.unique(asins, return_index=True)
    position = np.searchsorted(unique, item_ids)
    position = np.minimum(position, len(unique) - 1)
    found = unique[position] == item_ids
    rows = first[position[found]]
    vectors = np.asarray(table["vector"][np.sort(rows)], dtype=np.float32)
    vectors = vectors[np.argsort(np.argsort(rows))]  # back to item order
    if not found.any():
        raise DataError(f"{path}: none of the {len(item_ids)} items has a feature vector")
    if not np.isfinite(vectors).all():
        raise DataError(f"{path}: feature vectors hold NaN or Inf values")
    features = np.empty((len(item_ids), dim), dtype=np.float32)
    features[:] = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    features[found] = vectors
    counts = {
        "records": int(len(asins)),
        "duplicates": int(len(asins) - len(unique)),
        "found": int(found.sum()),
        "missing": int((~found).sum()),
    }
    return features, counts


def encode_image_folder(
    folder: str | os.PathLike,
    model_path: str | os.PathLike,
    item_ids: np.ndarray,
    *,
    batch_size: int = 32,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Encode `<folder>/<item id>.<ext>` with the model file -> (float32 [n, dim], counts).
    Items without an image (or whose image cannot be decoded) get the mean vector (counted)."""
    import torch

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise DataError(
            "--images needs Pillow to decode images: pip install 'rearm[images]'"
        ) from None
    folder, model_path = Path(folder), Path(model_path)
    if not folder.is_dir():
        raise DataError(f"--images: {folder} is not a folder")
    model = load_image_model(model_path)
    say = progress or (lambda line: None)
    by_stem = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, path)
    started = time.perf_counter()
    outputs: dict[int, np.ndarray] = {}
    unreadable = []
    pending: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        batch = torch.stack([tensor for _, tensor in pending])
        with torch.no_grad():
            result = model(batch)
        if not isinstance(result, torch.Tensor) or result.shape[0] != len(pending):
            raise DataError(f"--image-model: {model_path}: must return a tensor [batch, dim]")
        result = result.reshape(len(pending), -1).to(torch.float32).numpy()
        for (index, _), row in zip(pending, result):
            outputs[index] = row
        pending.clear()
        say(f"  images {len(outputs):,} encoded, {time.perf_counter() - started:.1f} s")

    for index, item in enumerate(item_ids):
        path = by_stem.get(str(item))
        if path is None:
            continue
        try:
            with Image.open(path) as image:
                pending.append((index, _preprocess(image.convert("RGB"), torch)))
        except (UnidentifiedImageError, OSError, ValueError):
            unreadable.append(str(path.name))
            continue
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not outputs:
        raise DataError(f"--images: {folder}: no decodable image named after an item id")
    dims = {row.shape[0] for row in outputs.values()}
    vectors = np.stack([outputs[index] for index in sorted(outputs)])
    if not np.isfinite(vectors).all():
        raise DataError(f"--image-model: {model_path}: produced NaN or Inf values")
    features = np.empty((len(item_ids), dims.pop()), dtype=np.float32)
    features[:] = vectors.mean(axis=0)
    features[sorted(outputs)] = vectors
    counts = {
        "found": len(outputs),
        "missing": int(len(item_ids) - len(outputs)),
        "unreadable": unreadable[:20],
        "unreadable_count": len(unreadable),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return features, counts


def load_image_model(path: Path):
    """A `.pt2` torch.export program or a TorchScript module, in eval mode, on the CPU."""
    import torch

    if not path.is_file():
        raise DataError(f"--image-model: {path}: no such file")
    try:
        if path.suffix == ".pt2":
            model = torch.export.load(str(path)).module()
        else:
            model = torch.jit.load(str(path), map_location="cpu")
            model.eval()
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(
            f"--image-model: {path}: not a torch.export (.pt2) or TorchScript file "
            f"({type(error).__name__}: {first[:200]})"
        ) from None
    return model


def _preprocess(image, torch):
    width, height = image.size
    scale = RESIZE / min(width, height)
    size = (max(CROP, round(width * scale)), max(CROP, round(height * scale)))
    image = image.resize(size, resample=2)  # 2 = bilinear
    left, top = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    image = image.crop((left, top, left + CROP, top + CROP))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(
        IMAGENET_STD, dtype=np.float32
    )
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
