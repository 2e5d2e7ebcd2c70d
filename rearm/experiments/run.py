"""A training run: resolve data and model, train, and record everything in a run directory.

RUN_DIR/
  config.yaml      the fully resolved configuration
  protocol.json    negatives, masking, evaluated users, tie rule, metric definitions, data hashes
  metrics.jsonl    one JSON line per epoch (losses, valid metrics, train_s, eval_s)
  per_user.npz     per-user valid / test metrics of the saved model (see `write_per_user`)
  results.json     best epoch, valid / test metrics at the best epoch, timing, peak memory;
                   written last, so its presence marks a complete run
  checkpoint.pt    state_dict of the best epoch so far (written when validation improves)
  resume.pt        everything needed to continue training exactly where it was (written every
                   training.resume_every_s seconds and on SIGINT / SIGTERM; removed when the run
                   completes); `rearm train --resume RUN_DIR` continues from it
  model/           the saved bundle (rearm.experiments.bundle)
  status.json      running / complete / interrupted / failed / diverged (experiments.status)
Every file is written atomically; results.json is the last file of a complete run, then its
status.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import resource
import shutil
import statistics
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rearm.data.dataset import Dataset
from rearm.errors import RearmError, RunError, StoppedError
from rearm.experiments.bundle import load_bundle, save_bundle
from rearm.experiments.config import RunConfig, dump_yaml
from rearm.experiments.status import (
    LOCK_FILE,
    RESUME_FILE,
    RUN_ARTIFACTS,
    read_status,
    resume_hint,
    run_lock,
    write_status,
)
from rearm.experiments.status import describe as describe_status
from rearm.io import atomic_open, file_sha256, write_json
from rearm.models import get_model
from rearm.training.guards import DivergenceError, deferred_stop, last_signal, stop_signals
from rearm.training.trainer import EpochRecord, Progress, fit, resolve_device, seed_everything

RUN_FILES = ("config.yaml", "results.json", "metrics.jsonl", "protocol.json", "per_user.npz")
REPORTED = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20", "Precision@20", "MAP@20")

# The embedded default data set (`rearm train` with no --data).
SYNTHETIC_DEFAULT = {"num_users": 2000, "num_items": 1000, "seed": 2025}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_run_data(path: str | None, modalities: list[str] | None = None) -> Dataset:
    """The data set a run's `data` names: a folder or file, a synthetic recipe
    ("synthetic:modalities=...;users=...", see rearm.data.synth.parse_synthetic_recipe), or None
    for the synthetic default; restricted to `modalities` (in that order) when given."""
    from rearm.data.synth import is_synthetic_recipe, make_synthetic, parse_synthetic_recipe

    if path is None:
        dataset = make_synthetic(**SYNTHETIC_DEFAULT)
    elif is_synthetic_recipe(path):
        dataset = make_synthetic(**parse_synthetic_recipe(path, SYNTHETIC_DEFAULT))
        dataset = replace(dataset, source=path)
    else:
        from rearm.data import load_dataset

        dataset = load_dataset(path)
    return dataset if modalities is None else dataset.select_modalities(modalities)


def check_run_dir(out: str | os.PathLike, force: bool, holding_lock: bool = False) -> dict | None:
    """Refuse an --out that must not be replaced: a file, a folder of other things, a complete
    run (without --force) or a run another process is writing. Returns the status of the run
    there (None: nothing there). Reads only. `holding_lock`: this process holds the run lock,
    so a `running` status there was left by a process that died."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    if not out.is_dir() or not any(path.name != LOCK_FILE for path in out.iterdir()):
        return None
    record = read_status(out)
    if record is None:
        raise RunError(f"--out {out}: directory is not empty and holds no rearm run")
    if holding_lock and record["status"] == "running":
        record["alive"] = False
    if record["status"] == "running" and record.get("alive", True):
        raise RunError(f"--out {out}: a run is being written there ({describe_status(record)})")
    if record["status"] == "complete" and not force:
        raise RunError(f"--out {out}: already holds a run (complete; use --force to replace it)")
    return record


def prepare_run_dir(out: str | os.PathLike, force: bool, progress: Progress | None = None) -> Path:
    """Check --out again (call it holding the run lock), then remove the previous run's files."""
    out = Path(out)
    record = check_run_dir(out, force, holding_lock=True)
    if record is not None and progress is not None:
        progress.line(f"replacing the {describe_status(record)} run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    remove_run_files(out, keep_lock=True)
    return out


def remove_run_files(out: Path, keep_lock: bool = False) -> None:
    for name in RUN_ARTIFACTS:
        path = out / name
        if name == LOCK_FILE and keep_lock:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for leftover in out.glob(".*.tmp"):  # temporaries of atomic writes a killed run left
        leftover.unlink()


def _discard_run(out: Path, created: bool) -> None:
    """Remove what this run wrote (and --out itself if this run created it); best effort."""
    with contextlib.suppress(OSError):
        remove_run_files(out)
        if created:
            out.rmdir()


def protocol_record(protocol, dataset: Dataset, fingerprint: str | None = None) -> dict:
    """`fingerprint`: of the data set as `data` names it, before a `modalities` selection
    (default: `dataset`'s own); `modalities` lists the tables the run used."""
    record = protocol.to_dict()
    record["data"] = {
        "format": dataset.format,
        "source": dataset.source,
        "fingerprint": fingerprint or dataset.fingerprint(),
        "modalities": {name: int(table.shape[1]) for name, table in dataset.features.items()},
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
    """Train `config` and write RUN_DIR; returns the results dict (also in results.json).

    Nothing is written before the data is loaded and the model built; from then on
    RUN_DIR/status.json follows the run (see rearm.experiments.status). SIGINT and SIGTERM stop
    after the current batch and still write everything from the best epoch. A failure to write
    (read-only folder, full disk) removes what this run wrote and raises RunError."""
    from rearm.evaluation.protocol import get_protocol

    started = time.perf_counter()
    progress = progress or Progress()
    device = resolve_device(config.device)  # before anything is written
    get_protocol(config.protocol)
    out = Path(out)
    check_run_dir(out, force)
    with stop_signals():
        dataset, model, graphs_s, fingerprint = _build(config, dataset, device, progress)
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            with run_lock(out):
                prepare_run_dir(out, force, progress)
                return _train_and_write(
                    config, out, dataset, model, device, progress, started, graphs_s, fingerprint
                )
        except OSError as error:
            _discard_run(out, created)
            raise _write_error(out, error, "nothing of this run was kept") from None


def resume_run(
    run_dir: str | os.PathLike,
    *,
    dataset: Dataset | None = None,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Continue the run in RUN_DIR from its resume.pt, exactly where it was: same configuration
    (config.yaml), same data (checked against protocol.json's fingerprint), and the model,
    optimiser, random states and position in the epoch of the saved state. The run then ends
    as if it had never stopped: the same parameters, metrics.jsonl, best epoch and results.
    `device` moves it to another device (cpu / cuda[:N]; the numbers then differ in rounding).

    Resumable: an interrupted run, one whose process died (status running, lock free) and a
    failed one, each with resume.pt; RunError otherwise, before anything is built."""
    from rearm.experiments.config import resolve_config

    started = time.perf_counter()
    progress = progress or Progress()
    out = Path(run_dir)
    _check_resumable(out)
    config = resolve_config(config_file=str(out / "config.yaml"))
    if device is not None:
        config = replace(config, device=device)
    device_ = resolve_device(config.device)
    recorded = _recorded_fingerprint(out)
    with stop_signals():
        if dataset is None:
            progress.line(f"loading data from {config.data or 'the synthetic default'}")
            dataset = load_run_data(config.data)
        actual = dataset.fingerprint()
        if actual != recorded:
            raise RunError(
                f"--resume {out}: the data set {config.data or '(synthetic default)'} is not the "
                f"one the run started on (fingerprint {actual[:12]}, protocol.json says "
                f"{recorded[:12]})"
            )
        dataset, model, graphs_s, fingerprint = _build(config, dataset, device_, progress, actual)
        with run_lock(out):
            _check_resumable(out, holding_lock=True)
            state = _load_resume_state(out)  # fit says where it resumes
            _restore_checkpoint(out, state["best"])
            for name in ("results.json", "per_user.npz", "model"):  # the stopped run's
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            try:
                return _train_and_write(
                    config,
                    out,
                    dataset,
                    model,
                    device_,
                    progress,
                    started,
                    graphs_s,
                    fingerprint,
                    resume=state,
                )
            except OSError as error:
                raise _write_error(out, error, f"its {RESUME_FILE} was kept") from None


def _build(
    config: RunConfig,
    dataset: Dataset | None,
    device,
    progress: Progress,
    fingerprint: str | None = None,
):
    """Load the data (unless given), check the memory plan, seed and build the model; returns
    (dataset with the run's modalities, model on `device`, seconds, data fingerprint).
    `fingerprint`: the given dataset's, when the caller has computed it already."""
    from rearm.data.cache import GraphCache

    if dataset is None:
        progress.line(f"loading data from {config.data or 'the synthetic default'}")
        dataset = load_run_data(config.data)
    # the record names the data set `data` names; `modalities` says which of its tables ran
    fingerprint = fingerprint or dataset.fingerprint()
    if config.modalities is not None:
        dataset = dataset.select_modalities(config.modalities)
    if config.training["memory_check"]:
        from rearm.planning import memory_refusal

        refusal = memory_refusal(config, dataset)
        if refusal is not None:
            raise RunError(refusal)
    seed_everything(config.seed)
    model_class = get_model(config.model)
    progress.line(
        f"building {config.model} ({dataset.num_users} users, {dataset.num_items} items, "
        f"modalities: {', '.join(dataset.features) or 'none'})"
    )
    graph_start = time.perf_counter()
    with _memory_errors(f"building {config.model}"):
        model = model_class.from_dataset(
            dataset,
            graph_cache=GraphCache(report=progress.line),
            seed=config.seed,
            progress=progress.line,
            **config.hyperparameters,
        ).to(device)
    graphs_s = time.perf_counter() - graph_start
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    progress.line(f"graphs and model ready in {graphs_s:.1f}s; {trainable:,} trainable parameters")
    return dataset, model, graphs_s, fingerprint


def _write_error(out: Path, error: OSError, kept: str) -> RunError:
    where = f" {error.filename}" if getattr(error, "filename", None) else ""
    return RunError(f"--out {out}: cannot write{where} ({error.strerror or error}); {kept}")


def _check_resumable(out: Path, holding_lock: bool = False) -> dict:
    """The status record of a run that can be resumed; RunError saying why not otherwise."""
    if not out.is_dir():
        raise RunError(f"--resume {out}: no such run directory")
    record = read_status(out)
    if record is None:
        raise RunError(f"--resume {out}: holds no rearm run")
    if holding_lock and record["status"] == "running":
        record["alive"] = False
    state = record["status"]
    if state == "running" and record.get("alive", True):
        raise RunError(f"--resume {out}: the run is still training ({describe_status(record)})")
    if state in ("complete", "diverged"):
        raise RunError(f"--resume {out}: the run is {describe_status(record)}; nothing to resume")
    if not (out / RESUME_FILE).is_file():
        raise RunError(
            f"--resume {out}: the run is {describe_status(record)} but wrote no {RESUME_FILE} "
            "(it writes one every training.resume_every_s seconds of training and when a stop "
            "signal ends training; 0 turns that off)"
        )
    if not (out / "config.yaml").is_file() or not (out / "protocol.json").is_file():
        raise RunError(f"--resume {out}: config.yaml or protocol.json is missing")
    path = out / RESUME_FILE
    try:  # a truncated or foreign file fails here, before anything is built
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl: not written by torch.save")
    except (OSError, zipfile.BadZipFile) as error:
        raise RunError(f"--resume {path}: not a readable resume state ({error})") from None
    return record


def _recorded_fingerprint(out: Path) -> str:
    path = out / "protocol.json"
    try:
        return json.loads(path.read_text())["data"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RunError(f"--resume {path}: cannot read the data fingerprint ({error})") from None


def _restore_checkpoint(out: Path, best: dict) -> None:
    """Make checkpoint.pt the resume state's best epoch again: the stopped process may have
    written a later one after its last resume state, or stopped before writing its own."""
    if best["state"] is None:
        (out / "checkpoint.pt").unlink(missing_ok=True)
        return
    try:
        epoch = torch.load(out / "checkpoint.pt", mmap=True, weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001  (missing or damaged: written again below)
        epoch = None
    if epoch != best["epoch"]:
        with atomic_open(out / "checkpoint.pt", "wb") as handle:
            torch.save({"epoch": best["epoch"], "state_dict": best["state"]}, handle)


def _load_resume_state(out: Path) -> dict:
    """The saved state, on the CPU: random states must be CPU tensors, and fit() copies the
    model's and the optimiser's state onto their parameters' device itself."""
    path = out / RESUME_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (a damaged or foreign file, whatever torch raises)
        raise RunError(
            f"--resume {path}: not a readable resume state ({_first_line(error)})"
        ) from None
    if not isinstance(state, dict) or "run" not in state or "epoch" not in state:
        raise RunError(f"--resume {path}: not a rearm resume state")
    return state


def _train_and_write(
    config, out, dataset, model, device, progress, started, graphs_s, fingerprint, resume=None
):
    """The part of train_run / resume_run that writes RUN_DIR, status transitions included."""
    from rearm.evaluation.protocol import get_protocol

    protocol = get_protocol(config.protocol)
    runs = resume["run"] if resume is not None else {"processes": []}
    this = {"started": _now(), "from": _position(resume) if resume is not None else None}
    runs["processes"].append(this)
    write_status(out, "running", model=config.model, **({"resumed": this} if resume else {}))
    try:
        if resume is None:
            with atomic_open(out / "config.yaml") as handle:
                handle.write(dump_yaml(config))
            write_json(out / "protocol.json", protocol_record(protocol, dataset, fingerprint))
        with deferred_stop():
            result = _fit_run(
                config, out, dataset, model, protocol, progress, resume, runs, this, started
            )
            stopped = result.interrupted or result.diverged
            if result.epochs_run == 0 or (result.best_epoch == 0 and stopped):
                # no epoch, or (eval_every > 1) no validation yet: no model was ever selected,
                # so none is saved as if it had been
                state = "diverged" if result.diverged else "interrupted"
                before = (
                    "the first epoch finished"
                    if result.epochs_run == 0
                    else f"the first validation (eval_every={config.training['eval_every']})"
                )
                write_status(
                    out,
                    state,
                    epoch=result.epochs_run + 1,
                    where=result.diverged,
                    signal=last_signal() or "SIGINT",
                    note=f"stopped before {before}",
                )
                if result.diverged:
                    raise DivergenceError(result.diverged)
                hint = resume_hint(out)
                raise StoppedError(
                    f"--out {out}: interrupted before {before}; "
                    + (f"no model saved{hint}" if hint else "nothing saved"),
                    last_signal(),
                )
            results = _write_results(config, out, dataset, model, protocol, device, result)
            results["timing"]["graphs_s"] = round(graphs_s, 3)
            results["timing"]["total_s"] = round(time.perf_counter() - started, 3)
            this["seconds"] = round(time.perf_counter() - started, 3)
            this["peak_rss_mb"] = results["peak_rss_mb"]
            results["timing"]["resume_saves"] = result.resume_saves
            results["timing"]["resume_save_s"] = round(result.resume_save_s, 3)
            if len(runs["processes"]) > 1:
                # every process of the run: when it started, where it started from, its seconds
                # until its last resume state (the work after that was done again) and its peak
                results["processes"] = runs["processes"]
                results["peak_rss_mb"] = max(
                    entry.get("peak_rss_mb", 0.0) for entry in runs["processes"]
                )
            results["trainable_parameters"] = sum(
                p.numel() for p in model.parameters() if p.requires_grad
            )
            write_json(out / "results.json", results)
            _write_final_status(out, result)
    except KeyboardInterrupt as stop:
        write_status(out, "interrupted", signal=str(stop) or "SIGINT", note="no model saved")
        raise
    except RearmError as error:
        if read_status(out)["status"] == "running":
            write_status(out, "failed", error=str(error))
        raise
    except OSError:
        raise
    except Exception as error:
        write_status(out, "failed", error=f"{type(error).__name__}: {error}")
        raise
    test = results["test"]
    if result.diverged:
        raise DivergenceError(result.diverged, kept=f"best epoch {result.best_epoch} in {out}")
    progress.line(
        f"best epoch {result.best_epoch}: test Recall@20={test['Recall@20']:.4f} "
        f"NDCG@20={test['NDCG@20']:.4f} -> {out}"
    )
    return results


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _position(state: dict) -> dict:
    """Where a resume state stands: {epoch, step, steps} (step 0: before the epoch began)."""
    inside = state["epoch_start"] is not None
    return {
        "epoch": int(state["epoch"]),
        "step": int(state["batch"]) if inside else 0,
        "steps": int(state["num_batches"]) if inside else None,
    }


def _write_final_status(out: Path, result) -> None:
    if not result.interrupted:  # complete or diverged: nothing left to resume
        (out / RESUME_FILE).unlink(missing_ok=True)
    if result.diverged:
        write_status(out, "diverged", where=result.diverged, best_epoch=result.best_epoch)
    elif result.interrupted:
        write_status(
            out,
            "interrupted",
            signal=last_signal() or "SIGINT",
            epoch=result.epochs_run,
            best_epoch=result.best_epoch,
        )
    else:
        write_status(out, "complete", best_epoch=result.best_epoch)


def _fit_run(config, out, dataset, model, protocol, progress, resume, runs, this, started):
    history: list[EpochRecord] = (
        [EpochRecord(**record) for record in resume["history"]] if resume is not None else []
    )

    def on_epoch_end(record: EpochRecord) -> None:
        history.append(record)
        with atomic_open(out / "metrics.jsonl") as handle:
            for item in history:
                handle.write(json.dumps(item.to_dict()) + "\n")

    def on_improve(record: EpochRecord, current) -> None:
        with atomic_open(out / "checkpoint.pt", "wb") as handle:
            torch.save({"epoch": record.epoch, "state_dict": current.state_dict()}, handle)

    def on_resume_state(state: dict) -> None:
        begin = time.perf_counter()
        this["seconds"] = round(begin - started, 3)
        this["peak_rss_mb"] = round(peak_rss_mb(), 1)
        state["run"] = runs
        with atomic_open(out / RESUME_FILE, "wb") as handle:
            torch.save(state, handle)
        where = _position(state)
        at = f"step {where['step']}/{where['steps']}" if where["steps"] else "its start"
        progress.line(
            f"resume state saved (epoch {where['epoch']}, {at}) in {time.perf_counter() - begin:.1f}s"
        )

    training = config.training
    with _memory_errors(f"training {config.model}"):
        return fit(
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
            resume_every_s=training["resume_every_s"],
            on_resume_state=on_resume_state,
            resume=resume,
            max_steps_per_epoch=training["max_steps_per_epoch"],
        )


def _write_results(config, out, dataset, model, protocol, device, result) -> dict:
    """Save the bundle of the best epoch and compute the results dict from it."""
    training = config.training
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
    state = "diverged" if result.diverged else "interrupted" if result.interrupted else "complete"
    return {
        "model": config.model,
        "preset": config.preset,
        "protocol": config.protocol,
        "seed": config.seed,
        "status": state,
        **({"diverged": result.diverged} if result.diverged else {}),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "interrupted": bool(result.interrupted),
        # a dry run's epochs are partial: say so next to their timings
        **(
            {"max_steps_per_epoch": training["max_steps_per_epoch"]}
            if training["max_steps_per_epoch"]
            else {}
        ),
        "valid": {k: valid[k] for k in REPORTED if k in valid} | _rest(valid),
        "test": {k: test[k] for k in REPORTED if k in test} | _rest(test),
        "timing": {
            "graphs_s": None,
            "train_epoch_s": round(statistics.median(r.train_s for r in result.history), 3),
            "eval_s": round(
                statistics.median([r.eval_s for r in result.history if r.valid] or [0.0]), 3
            ),
            "total_s": None,
        },
        "trainable_parameters": None,
        "notes": model.notes()
        + ([f"protocol {protocol.name}: {protocol.quirk}"] if protocol.quirk else []),
        "device": str(device),
        "cuda_graph": result.cuda_graph,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


@contextlib.contextmanager
def _memory_errors(what: str):
    """Allocation failures (an embedding_dim or batch_size too large for the machine) become
    one-line RunErrors."""
    try:
        yield
    except (MemoryError, torch.OutOfMemoryError) as error:
        raise RunError(f"{what}: too large for memory ({_first_line(error)})") from None
    except RuntimeError as error:
        text = str(error).lower()
        if not any(word in text for word in ("alloc", "memory", "overflow")):
            raise
        raise RunError(f"{what}: too large for memory ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


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
