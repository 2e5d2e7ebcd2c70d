"""A training run: resolve data and model, train, and record everything in a run directory.

RUN_DIR/
  config.yaml      the fully resolved configuration
  protocol.json    negatives, masking, evaluated users, tie rule, metric definitions, data hashes
  metrics.jsonl    one JSON line per epoch (losses, valid metrics, train_s, eval_s)
  per_user.npz     per-user valid / test metrics of the saved model (see `write_per_user`)
  results.json     best epoch, valid / test metrics at the best epoch, timing, peak memory;
                   written last, so its presence marks a complete run
  checkpoint.pt    state_dict of the best epoch so far (written when validation improves)
  model/           the saved bundle (rearm.experiments.bundle)
Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rearm.data.dataset import Dataset
from rearm.errors import RunError
from rearm.experiments.bundle import load_bundle, save_bundle
from rearm.experiments.config import RunConfig, dump_yaml
from rearm.io import atomic_open, file_sha256, write_json
from rearm.models import get_model
from rearm.training.trainer import EpochRecord, Progress, fit, resolve_device, seed_everything

RUN_FILES = ("config.yaml", "results.json", "metrics.jsonl", "protocol.json", "per_user.npz")
REPORTED = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "Precision@20", "MAP@20")

# The embedded default data set (`rearm train` with no --data).
SYNTHETIC_DEFAULT = {"num_users": 2000, "num_items": 1000, "seed": 2025}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_run_data(path: str | None) -> Dataset:
    if path is None:
        from rearm.data.synth import make_synthetic

        return make_synthetic(**SYNTHETIC_DEFAULT)
    from rearm.data import load_dataset

    return load_dataset(path)


def prepare_run_dir(out: str | os.PathLike, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not any((out / name).exists() for name in RUN_FILES + ("model",)):
            raise RunError(f"--out {out}: directory is not empty and holds no rearm run")
        if not force:
            raise RunError(f"--out {out}: already holds a run (use --force to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES + ("checkpoint.pt",):
        if (out / name).exists():
            (out / name).unlink()
    return out


def protocol_record(protocol, dataset: Dataset) -> dict:
    record = protocol.to_dict()
    record["data"] = {
        "format": dataset.format,
        "source": dataset.source,
        "fingerprint": dataset.fingerprint(),
        "files": {
            name: {"path": str(path), "sha256": file_sha256(path)}
            for name, path in sorted(dataset.files.items())
            if os.path.isfile(path)
        },
    }
    record["evaluated_users_count"] = {
        split: int((dataset.split(split).getnnz(axis=1) > 0).sum()) for split in ("valid", "test")
    }
    return record


def train_run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    force: bool = False,
    dataset: Dataset | None = None,
    progress: Progress | None = None,
) -> dict:
    """Train `config` and write RUN_DIR; returns the results dict (also in results.json)."""
    from rearm.data.cache import GraphCache
    from rearm.evaluation.protocol import get_protocol

    started = time.perf_counter()
    progress = progress or Progress()
    device = resolve_device(config.device)  # before anything is written
    out = prepare_run_dir(out, force)
    protocol = get_protocol(config.protocol)
    if dataset is None:
        progress.line(f"loading data from {config.data or 'the synthetic default'}")
        dataset = load_run_data(config.data)
    with atomic_open(out / "config.yaml") as handle:
        handle.write(dump_yaml(config))
    write_json(out / "protocol.json", protocol_record(protocol, dataset))

    seed_everything(config.seed)
    model_class = get_model(config.model)
    progress.line(
        f"building {config.model} ({dataset.num_users} users, {dataset.num_items} items, "
        f"modalities: {', '.join(dataset.features) or 'none'})"
    )
    graph_start = time.perf_counter()
    model = model_class.from_dataset(
        dataset,
        graph_cache=GraphCache(),
        seed=config.seed,
        progress=progress.line,
        **config.hyperparameters,
    ).to(device)
    graphs_s = time.perf_counter() - graph_start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    progress.line(f"graphs and model ready in {graphs_s:.1f}s; {trainable:,} trainable parameters")

    history: list[EpochRecord] = []

    def on_epoch_end(record: EpochRecord) -> None:
        history.append(record)
        with atomic_open(out / "metrics.jsonl") as handle:
            for item in history:
                handle.write(json.dumps(item.to_dict()) + "\n")

    def on_improve(record: EpochRecord, current) -> None:
        with atomic_open(out / "checkpoint.pt", "wb") as handle:
            torch.save({"epoch": record.epoch, "state_dict": current.state_dict()}, handle)

    training = config.training
    result = fit(
        model,
        dataset,
        protocol,
        epochs=training["epochs"],
        patience=training["patience"],
        batch_size=training["batch_size"],
        learning_rate=training["learning_rate"],
        weight_decay=training["weight_decay"],
        seed=config.seed,
        eval_batch_size=training["eval_batch_size"],
        eval_every=training["eval_every"],
        precision=training["precision"],
        cuda_graph=training["cuda_graph"],
        on_epoch_end=on_epoch_end,
        on_improve=on_improve,
        progress=progress,
    )
    if result.epochs_run == 0:
        raise RunError(f"--out {out}: interrupted before the first epoch finished; nothing saved")

    with torch.no_grad():
        user_repr, item_repr = model.embed()
    save_bundle(
        out,
        model=model,
        user_repr=user_repr,
        item_repr=item_repr,
        dataset=dataset,
        config=config.to_dict(),
        protocol=config.protocol,
    )
    # Final metrics come from the saved bundle itself, so `rearm evaluate` reproduces them exactly.
    bundle = load_bundle(out)
    valid = bundle.evaluate("valid", training["eval_batch_size"], per_user=True)
    test = bundle.evaluate("test", training["eval_batch_size"], per_user=True)
    write_per_user(
        out / "per_user.npz", {"valid": valid.pop("per_user"), "test": test.pop("per_user")}
    )
    results = {
        "model": config.model,
        "preset": config.preset,
        "protocol": config.protocol,
        "seed": config.seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "interrupted": result.interrupted,
        "valid": {k: valid[k] for k in REPORTED if k in valid} | _rest(valid),
        "test": {k: test[k] for k in REPORTED if k in test} | _rest(test),
        "timing": {
            "graphs_s": round(graphs_s, 3),
            "train_epoch_s": round(statistics.median(r.train_s for r in result.history), 3),
            "eval_s": round(
                statistics.median([r.eval_s for r in result.history if r.valid] or [0.0]), 3
            ),
            "total_s": round(time.perf_counter() - started, 3),
        },
        "trainable_parameters": trainable,
        "notes": model.notes()
        + ([f"protocol {protocol.name}: {protocol.quirk}"] if protocol.quirk else []),
        "device": str(device),
        "cuda_graph": result.cuda_graph,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_json(out / "results.json", results)
    progress.line(
        f"best epoch {result.best_epoch}: test Recall@20={test['Recall@20']:.4f} "
        f"NDCG@20={test['NDCG@20']:.4f} -> {out}"
    )
    return results


def write_per_user(path: str | os.PathLike, tables: dict[str, dict]) -> None:
    """Write per-user metrics atomically: for each split, `<split>_users` (int64 user indices
    evaluated, ascending) and `<split>_<Metric>@K` (float64, aligned with them)."""
    arrays = {}
    for split, table in tables.items():
        order = np.argsort(table["users"], kind="stable")
        arrays[f"{split}_users"] = table["users"][order]
        for name, values in table.items():
            if name != "users":
                arrays[f"{split}_{name}"] = values[order]
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _rest(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in REPORTED and not isinstance(v, dict)}
