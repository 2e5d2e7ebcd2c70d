"""Build REARM's graphs for a data set and write them to a folder, for inspection or reuse
outside rearm (`rearm graphs`).

OUT/
  bipartite.npz, item_cooccurrence.npz, user_cooccurrence.npz, item_semantic.npz,
  user_interest.npz, item_homograph.npz, user_homograph.npz   (scipy.sparse CSR, see save_graphs;
                   graphs the configuration does not use, e.g. under an ablation, are left out)
  graphs.json      data fingerprint, every build argument, shape / nnz / seconds of each graph
Every file is written atomically; graphs.json is written last, so a folder that has it is complete.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rearm import __version__
from rearm.data.dataset import Dataset
from rearm.errors import ConfigError, RunError
from rearm.experiments.config import RunConfig
from rearm.io import write_json

MANIFEST = "graphs.json"


def export_graphs(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    force: bool = False,
    dataset: Dataset | None = None,
    use_cache: bool = True,
    compressed: bool = False,
    progress=None,
) -> dict:
    """Build the graphs REARM would train on under `config` and write them into `out`.

    Args:
        config: a resolved run configuration of model "rearm" (its graph hyperparameters,
            preset, seed and data path are used).
        out: folder to write; must be new, empty, or hold graphs from an earlier export.
        force: replace graphs already in `out`.
        dataset: use this data set instead of loading `config.data`.
        use_cache: read and fill the data layer's GraphCache.
        compressed: zip-compress the .npz files (about 40% smaller, written about 50x slower;
            see `save_graphs`).
        progress: a training.trainer.Progress (or None for silence).

    Returns:
        The manifest written to OUT/graphs.json.

    Raises:
        ConfigError: the configuration is not REARM's or its graph settings are invalid.
        RunError: `out` is a file, holds other files, or holds graphs and force is False.
        DataError: the data set cannot be read.
    """
    from rearm.data.cache import GraphCache
    from rearm.experiments.run import load_run_data
    from rearm.graphs import BUILDER_VERSION, GRAPH_FILES, build_graphs, save_graphs
    from rearm.graphs.build import graph_seconds
    from rearm.models import get_model

    if config.model != "rearm":
        raise ConfigError(f"rearm graphs builds REARM's graphs; model {config.model!r} given")
    out = _check_out(Path(out), force, set(GRAPH_FILES.values()))

    def say(text: str) -> None:
        if progress is not None:
            progress.line(text)

    if dataset is None:
        say(f"loading data from {config.data or 'the synthetic default'}")
        dataset = load_run_data(config.data)
    if config.modalities is not None:
        dataset = dataset.select_modalities(config.modalities)
    arguments = get_model("rearm").graph_arguments(dataset, config.hyperparameters)
    started = time.perf_counter()
    graphs = build_graphs(
        dataset,
        **arguments,
        seed=config.seed,
        cache=GraphCache() if use_cache else None,
        progress=lambda step: say(f"[{time.perf_counter() - started:7.1f}s] {step}"),
    )
    total_s = time.perf_counter() - started
    say(f"built in {total_s:.1f}s; writing {out}")
    # graphs.json goes last: until it is written again the folder is incomplete
    (out / MANIFEST).unlink(missing_ok=True)
    files = save_graphs(graphs, out, compressed=compressed)
    for stale in set(GRAPH_FILES.values()) - set(files.values()):  # left by a replaced export
        (out / stale).unlink(missing_ok=True)
    seconds = graph_seconds(graphs.timings)
    manifest = {
        "rearm_version": __version__,
        "builder_version": BUILDER_VERSION,
        "data": {
            "source": dataset.source or config.data or "synthetic default",
            "format": dataset.format,
            "fingerprint": dataset.fingerprint(),
            "users": dataset.num_users,
            "items": dataset.num_items,
            "train_interactions": int(dataset.train.nnz),
            "modalities": {name: int(x.shape[1]) for name, x in dataset.features.items()},
        },
        "preset": config.preset,
        "seed": config.seed,
        "arguments": arguments,
        "cache": use_cache,
        "compressed": compressed,
        "total_s": round(total_s, 3),
        "graphs": {
            name: {
                "file": filename,
                "shape": list(getattr(graphs, name).shape),
                "nnz": int(getattr(graphs, name)._nnz()),
                "seconds": round(seconds[name], 3),
            }
            for name, filename in files.items()
        },
        "steps": {name: round(value, 3) for name, value in graphs.timings.items()},
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def _check_out(out: Path, force: bool, ours: set[str]) -> Path:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        present = {entry.name for entry in out.iterdir()}
        foreign = sorted(present - ours - {MANIFEST})
        if foreign:
            raise RunError(
                f"--out {out}: holds files that are not rearm graphs: {', '.join(foreign[:3])}"
            )
        if present and not force:
            raise RunError(f"--out {out}: already holds graphs (use --force to replace them)")
    return out  # created when the first file is written (save_graphs)
