"""Score decomposition: how much each block of a model's representation contributes.

A model whose `embedding_blocks()` names column blocks b of its representations (REARM: one per
modality plus the meta block) has score(u, i) = sum_b t_b(u, i) with t_b = <h_u[b], h_i[b]>
exactly. Over the held-out pairs P of a split this module reports, per block:

  share             mean over pairs of |t_b| / sum_c |t_c|: the block's part of the score's
                    magnitude, in [0, 1], summing to 1 over blocks (pairs whose terms are all 0
                    are left out);
  mean_term         mean over pairs of t_b, signed; the blocks' mean terms add up to the mean
                    score;
  fraction_of_score mean_term / mean score, signed, summing to 1 (None if the mean score is 0);
  alone             the split's ranking metrics with every other block zeroed (so the score is
                    t_b alone), under the run's protocol and the bundle's own evaluation path.

With every block kept the metrics are the run's own (tested against results.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from rearm.errors import ConfigError, RunError

REPORTED = ("Recall@20", "NDCG@20")
PAIR_CHUNK = 1 << 18


def score_blocks(bundle) -> list[tuple[str, int]]:
    """The bundle's [(name, width), ...]; RunError if its model has none (or it predates them)."""
    blocks = bundle.meta.get("score_blocks")
    if not blocks:
        raise RunError(
            f"this model ({bundle.meta.get('model', 'unknown')}) has no score blocks: its score "
            "does not split into named blocks"
        )
    blocks = [(str(name), int(width)) for name, width in blocks]
    if sum(width for _, width in blocks) != bundle.user_repr.shape[1]:
        raise RunError(
            f"damaged model bundle: score_blocks {blocks} do not add up to the representation "
            f"width {bundle.user_repr.shape[1]}"
        )
    return blocks


def block_terms(bundle, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """float64 [len(users), num_blocks]: t_b(u, i) for each pair (users[k], items[k])."""
    blocks = score_blocks(bundle)
    bounds = np.cumsum([0] + [width for _, width in blocks])
    terms = np.empty((len(users), len(blocks)), dtype=np.float64)
    for start in range(0, len(users), PAIR_CHUNK):
        stop = start + PAIR_CHUNK
        products = bundle.user_repr[users[start:stop]].astype(np.float64) * bundle.item_repr[
            items[start:stop]
        ].astype(np.float64)
        terms[start:stop] = np.add.reduceat(products, bounds[:-1], axis=1)
    return terms


def block_shares(terms: np.ndarray) -> dict[str, np.ndarray | float | int]:
    """Per-block statistics of a [pairs, blocks] term matrix (see the module docstring):
    {"share": [blocks], "mean_term": [blocks], "fraction_of_score": [blocks] or None,
    "mean_score": float, "pairs": int, "zero_pairs": int}."""
    terms = np.asarray(terms, dtype=np.float64)
    if terms.ndim != 2 or terms.shape[0] == 0:
        raise ValueError(
            f"block_shares needs a non-empty [pairs, blocks] matrix, got {terms.shape}"
        )
    magnitude = np.abs(terms).sum(axis=1)
    nonzero = magnitude > 0
    share = (
        (np.abs(terms[nonzero]) / magnitude[nonzero, None]).mean(axis=0)
        if nonzero.any()
        else np.full(terms.shape[1], np.nan)
    )
    mean_term = terms.mean(axis=0)
    mean_score = float(terms.sum(axis=1).mean())
    return {
        "share": share,
        "mean_term": mean_term,
        "fraction_of_score": mean_term / mean_score if mean_score != 0 else None,
        "mean_score": mean_score,
        "pairs": int(terms.shape[0]),
        "zero_pairs": int((~nonzero).sum()),
    }


def block_alone(bundle, name: str):
    """A copy of `bundle` whose user representations keep only block `name` (others zeroed)."""
    blocks = score_blocks(bundle)
    names = [block for block, _ in blocks]
    if name not in names:
        raise ConfigError(f"unknown score block {name!r} (blocks: {', '.join(names)})")
    start = sum(width for _, width in blocks[: names.index(name)])
    width = blocks[names.index(name)][1]
    user_repr = np.zeros_like(bundle.user_repr)
    user_repr[:, start : start + width] = bundle.user_repr[:, start : start + width]
    return dataclasses.replace(bundle, user_repr=user_repr)


def contributions(
    bundle,
    split: str = "test",
    batch_size: int = 1024,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Each score block's share of the score on the held-out pairs of `split` and the split's
    metrics of that block alone (see the module docstring).

    Returns {"model", "protocol", "split", "pairs", "zero_pairs", "mean_score",
    "all_blocks": {metric: value}, "blocks": [{"name", "width", "share", "mean_term",
    "fraction_of_score", "alone": {metric: value}}, ...]} with metrics Recall@20 and NDCG@20.
    """
    if split not in ("valid", "test"):
        raise ConfigError(f"--split: expected valid or test, got {split!r}")
    blocks = score_blocks(bundle)
    heldout = bundle.split(split).tocoo()
    if heldout.nnz == 0:
        raise RunError(f"the bundle has no {split} interactions: nothing to decompose")
    stats = block_shares(block_terms(bundle, heldout.row, heldout.col))

    def metrics(candidate, label: str) -> dict[str, float]:
        if progress is not None:
            progress(f"ranking all items for the {split} users with {label}")
        values = candidate.evaluate(split, batch_size)
        return {key: float(values[key]) for key in REPORTED if key in values}

    fraction = stats["fraction_of_score"]
    return {
        "model": bundle.meta.get("model"),
        "protocol": bundle.meta.get("protocol"),
        "split": split,
        "pairs": stats["pairs"],
        "zero_pairs": stats["zero_pairs"],
        "mean_score": stats["mean_score"],
        "all_blocks": metrics(bundle, "all blocks"),
        "blocks": [
            {
                "name": name,
                "width": width,
                "share": _number(stats["share"][index]),
                "mean_term": float(stats["mean_term"][index]),
                "fraction_of_score": None if fraction is None else float(fraction[index]),
                "alone": metrics(block_alone(bundle, name), f"block {name!r} alone"),
            }
            for index, (name, width) in enumerate(blocks)
        ],
    }


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
