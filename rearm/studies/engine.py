"""Run a study: expand the spec into cells, skip the complete ones, run the rest in parallel
worker processes (or Ray tasks), and keep STUDY_DIR/study.json consistent after every change.

STUDY_DIR/
  study.json            spec, rows, cells (directory, key, status, seconds), status, timings
  runs/<name>-s<seed>-<key8>/   an ordinary run directory per cell (`rearm train`'s files)
  logs/<cell dir>.log   the cell's progress output
  data/<name>/          data sets the spec derives (a `corruption` entry: rearm.studies.derive)

A cell is complete when its run directory has results.json (the last file a run writes), the run
was not interrupted, status.json (if present) says complete, and the configuration and data
fingerprint recorded in the run hash to the cell's key. A cell whose run stopped (interrupted,
killed, failed) with a resume.pt and the cell's key continues from it (`rearm train --resume`);
anything else is rerun from scratch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from rearm.errors import ConfigError, RunError
from rearm.io import write_json
from rearm.studies.spec import Cell, Row, StudySpec, cell_key, expand_cells
from rearm.studies.worker import resuming, thread_environment

STUDY_FILE = "study.json"
STOP_GRACE_S = 10.0


def cell_complete(run_dir: str | os.PathLike, key: str) -> bool:
    """Whether `run_dir` holds a complete run whose configuration and data hash to `key`."""
    run_dir = Path(run_dir)
    try:
        results = json.loads((run_dir / "results.json").read_text())
        status_path = run_dir / "status.json"
        if status_path.exists() and json.loads(status_path.read_text()).get("status") not in (
            "complete",
        ):
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if results.get("interrupted"):
        return False
    return _run_key(run_dir) == key


def cell_resumable(run_dir: str | os.PathLike, key: str) -> bool:
    """Whether `run_dir` holds a stopped run (interrupted, killed or failed) with a resume state
    whose configuration and data hash to `key`."""
    from rearm.experiments.status import RESUME_FILE, read_status

    run_dir = Path(run_dir)
    if not (run_dir / RESUME_FILE).is_file():
        return False
    record = read_status(run_dir)
    if record is None or record["status"] in ("complete", "diverged"):
        return False
    if record["status"] == "running" and record.get("alive", True):
        return False
    return _run_key(run_dir) == key


def _run_key(run_dir: Path) -> str | None:
    """The cell key of the configuration and data fingerprint a run recorded (None: unreadable)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        fingerprint = json.loads((run_dir / "protocol.json").read_text())["data"]["fingerprint"]
        return cell_key(config, fingerprint)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return None


def data_fingerprints(
    spec: StudySpec, line: Callable[[str], None], loaded: dict | None = None
) -> dict[str | None, str]:
    """{data path: fingerprint}; `loaded` ({path: Dataset}) saves reading those again."""
    from rearm.experiments.run import load_run_data

    fingerprints = {}
    for path in spec.data:
        if loaded and path in loaded:
            fingerprints[path] = loaded[path].fingerprint()
            continue
        line(f"reading {path or 'the synthetic default data set'}")
        fingerprints[path] = load_run_data(path).fingerprint()
    return fingerprints


@dataclass
class Task:
    """A cell to run: its key, run directory, log file and worker payload."""

    key: str
    name: str
    run_dir: Path
    log: Path
    config: dict


class StudyRecord:
    """study.json in memory; every `save` rewrites it atomically."""

    def __init__(self, out: Path, spec: StudySpec, rows: list[Row], cells: list[Cell]) -> None:
        self.path = out / STUDY_FILE
        self.spec, self.rows, self.cells = spec, rows, cells
        self.state: dict[str, dict] = {}
        self.derived: dict[str, dict] = {}  # derived data folder -> how (rearm.studies.derive)
        self.started = time.time()
        self.status = "running"

    def set(self, key: str, **values) -> None:
        self.state.setdefault(key, {}).update(values)

    def save(self) -> None:
        cells = []
        for cell in self.cells:
            state = self.state.get(cell.key, {})
            cells.append(
                {
                    "row": cell.row,
                    "label": self.rows[cell.row].label,
                    "seed": cell.seed,
                    "dir": f"runs/{cell.dirname}",
                    "key": cell.key,
                    "config": cell.config.to_dict(),
                    **state,
                }
            )
        counts: dict[str, int] = {}
        for key in {cell.key for cell in self.cells}:
            status = self.state.get(key, {}).get("status", "pending")
            counts[status] = counts.get(status, 0) + 1
        write_json(
            self.path,
            {
                "name": self.spec.name,
                "kind": self.spec.kind,
                "status": self.status,
                "spec": self.spec.to_dict(),
                "reference": self.spec.reference,
                "rows": [
                    {
                        "index": row.index,
                        "label": row.label,
                        "data": row.data,
                        "data_label": row.data_label,
                        "model": row.model,
                        "group": row.group,
                        "values": row.values,
                    }
                    for row in self.rows
                ],
                "cells": cells,
                "derived": self.derived,
                "counts": counts,
                "timings": {
                    "started": self.started,
                    "updated": time.time(),
                    "wall_s": round(time.time() - self.started, 1),
                },
            },
        )


# what a report and a rerun read of study.json's rows and cells
_ROW_KEYS = ("label", "data_label")
_CELL_KEYS = ("key", "row", "seed", "dir")


def read_study_record(path: Path) -> dict:
    """study.json's content, checked for the keys a report and a rerun read: a RunError naming
    the file and what is wrong otherwise (FileNotFoundError passes through)."""
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable study record ({error})") from None
    problem = _record_problem(content)
    if problem:
        raise RunError(f"{path}: not a study record: {problem}")
    return content


def _record_problem(content) -> str | None:
    if not isinstance(content, dict):
        return f"a JSON {type(content).__name__}, not an object"
    for key in ("name", "kind", "rows", "cells"):
        if key not in content:
            return f"no {key!r}"
    for key, needed in (("rows", _ROW_KEYS), ("cells", _CELL_KEYS)):
        entries = content[key]
        if not isinstance(entries, list):
            return f"{key!r} is not a list"
        for position, entry in enumerate(entries):
            lacking = [name for name in needed if not isinstance(entry, dict) or name not in entry]
            if lacking:
                return f"{key}[{position}] lacks {lacking[0]!r}"
    return None


def _check_local_device(device: str) -> None:
    """A ConfigError now, not a failure in every cell, for a device this machine lacks (the
    Ray executor's cells run on other machines, so only local studies are checked)."""
    from rearm.training.trainer import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is not None:
        import torch

        if resolved.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices"
            )


def prepare_study_dir(out: Path) -> dict | None:
    """Make `out`'s runs/ and logs/ folders; returns its study.json's content (None for a new
    study). A damaged record, or a non-empty folder without one, stops the run before it
    writes."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    existing = None
    if (out / STUDY_FILE).exists():
        existing = read_study_record(out / STUDY_FILE)
    ours = {"runs", "logs", "data"}  # what an interrupted first invocation may have made
    if (
        out.is_dir()
        and any(p.name not in ours for p in out.iterdir())
        and not (out / STUDY_FILE).exists()
    ):
        raise RunError(f"--out {out}: directory is not empty and holds no study.json")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    return existing


# Runs at once when --jobs is not given, from measured aggregate throughput of REARM on Baby.
# GPU (one H200, benchmarks/gpu_throughput.py, benchmarks/results/h200_throughput_baby.json):
# 1.31 epochs per second with one run, 2.41 with two, 2.96 with four, 4.18 with eight; four keeps
# each run within about 2x of its solo speed while more than doubling the throughput.
# CPU (2 cores, benchmarks/training.py, benchmarks/results/cpu2_quiet_training.json): two runs of
# one thread each gave 1.19x the epochs per second of one run with two threads.
GPU_JOBS_PER_DEVICE = 4
CPU_JOBS = 2


def default_jobs(devices: list[str]) -> int:
    """Cells at once when --jobs is not given: GPU_JOBS_PER_DEVICE per GPU among `devices`
    ("auto" counts as a GPU where CUDA is available), else CPU_JOBS (at most one per core), each
    with cores // jobs threads."""
    gpus = [device for device in devices if device.startswith("cuda")]
    if "auto" in devices:
        import torch

        if torch.cuda.is_available():
            gpus.append("auto")
    if gpus:
        return GPU_JOBS_PER_DEVICE * len(gpus)
    return max(1, min(CPU_JOBS, os.cpu_count() or 1))


def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    *,
    jobs: int | None = None,
    threads: int | None = None,
    devices: list[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    dry_run: bool = False,
    line: Callable[[str], None] = print,
    where: str | None = None,
) -> dict:
    """Run every incomplete cell of `spec` into `out`; returns study.json's content.

    jobs: cells at once (default `default_jobs(devices)`); threads: threads per cell (default: cores // jobs, at least 1);
    devices: device names given to cells round-robin by worker slot (default: the spec's device,
    else "auto", as for `rearm train`); executor: "local" (worker processes) or "ray" (`address` of a running cluster,
    default a local instance). Ctrl-C stops the running cells (SIGTERM, then SIGKILL), records
    them as interrupted and re-raises KeyboardInterrupt. `where` names the spec in errors (default
    "study <name>").
    """
    where = where or f"study {spec.name}"
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor: expected local or ray, got {executor!r}")
    out = Path(out)
    devices = devices or [spec.device or "auto"]
    for device in devices:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", device):
            raise ConfigError(f"--device: expected auto, cpu or cuda[:N], got {device!r}")
        if executor == "local" and not dry_run:
            _check_local_device(device)
    jobs = jobs or default_jobs(devices)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)

    loaded, derived, derivation = None, {}, None
    if spec.corruption:
        from rearm.studies.derive import derive_corrupted

        # the copies are derived in memory: the whole spec (a bad modality, fraction or row
        # value) is checked below before a folder or a derived data set is written
        derivation = derive_corrupted(spec, out, line)
        spec, loaded, derived = derivation.spec, derivation.datasets, derivation.meta
    fingerprints = data_fingerprints(spec, line, loaded)
    rows, cells = expand_cells(spec, fingerprints, where=where)
    unique: dict[str, Cell] = {}
    # seed by seed: a study stopped early has every row at its first seeds, not some rows at all
    # seeds and others at none
    for cell in sorted(cells, key=lambda c: (spec.seeds.index(c.seed), c.row)):
        unique.setdefault(cell.key, cell)
    if dry_run:
        for cell in unique.values():
            line(f"{cell.dirname}  {rows[cell.row].label}  seed {cell.seed}")
        line(f"{len(rows)} rows x {len(spec.seeds)} seeds: {len(unique)} runs")
        return {"rows": len(rows), "runs": len(unique)}
    existing = prepare_study_dir(out)
    if derivation is not None:
        from rearm.studies.derive import write_derived

        write_derived(derivation, line)
    record = StudyRecord(out, spec, rows, cells)
    record.derived = derived
    previous = _previous_state(existing)
    tasks: list[Task] = []
    for key, cell in unique.items():
        run_dir = out / "runs" / cell.dirname
        if cell_complete(run_dir, key):
            record.set(key, status="complete", **previous.get(key, {}), skipped=True)
            continue
        tasks.append(
            Task(
                key,
                cell.dirname,
                run_dir,
                out / "logs" / f"{cell.dirname}.log",
                cell.config.to_dict(),
            )
        )
        record.set(key, status="pending")
    stale = sorted(
        p.name
        for p in (out / "runs").iterdir()
        if p.is_dir() and p.name not in {c.dirname for c in cells}
    )
    line(
        f"study {spec.name}: {len(rows)} rows x {len(spec.seeds)} seeds = {len(unique)} runs, "
        f"{len(unique) - len(tasks)} complete, {len(tasks)} to run "
        f"({jobs} at a time, {threads} threads each, {', '.join(devices)})"
        + (f"; {len(stale)} run folders not in this spec are kept" if stale else "")
    )
    record.save()
    progress = _ProgressLine(len(tasks), jobs, line)

    def on_start(task: Task) -> None:
        if task.run_dir.exists() and not cell_resumable(task.run_dir, task.key):
            shutil.rmtree(task.run_dir)  # an incomplete or outdated run: start it afresh
        record.set(task.key, status="running", started=time.time())
        record.save()

    def on_finish(task: Task, code: int, seconds: float) -> None:
        complete = code == 0 and cell_complete(task.run_dir, task.key)
        status = "complete" if complete else ("interrupted" if code in (3, -15, -9) else "failed")
        values = {"status": status, "seconds": round(seconds, 1), "exit_code": code}
        if status == "failed":
            values["error"] = _last_line(task.log)
        record.set(task.key, **values)
        record.save()
        progress.finished(task, status, seconds, values.get("error"))

    try:
        if executor == "ray":
            from rearm.studies.ray_executor import run_ray

            run_ray(tasks, jobs, threads, devices, address, on_start, on_finish)
        else:
            run_local(tasks, jobs, threads, devices, on_start, on_finish)
    except KeyboardInterrupt:
        for key, state in record.state.items():
            if state.get("status") in ("running", "pending"):
                record.set(key, status="interrupted" if state["status"] == "running" else "pending")
        record.status = "interrupted"
        record.save()
        line(f"study {spec.name}: interrupted; run the same command again to resume")
        raise
    statuses = [record.state[key]["status"] for key in unique]
    record.status = "complete" if all(s == "complete" for s in statuses) else "incomplete"
    record.save()
    failed = statuses.count("failed")
    line(
        f"study {spec.name}: {statuses.count('complete')}/{len(unique)} runs complete"
        + (f", {failed} failed (logs in {out / 'logs'})" if failed else "")
        + f" in {_duration(time.time() - record.started)} -> {out / STUDY_FILE}"
    )
    return json.loads((out / STUDY_FILE).read_text())


def _previous_state(content: dict | None) -> dict[str, dict]:
    """Timings of cells recorded by an earlier invocation (kept for skipped cells)."""
    if content is None:
        return {}
    return {
        c["key"]: {k: c[k] for k in ("seconds",) if k in c}
        for c in content.get("cells", [])
        if c.get("status") == "complete"
    }


def _last_line(path: Path) -> str:
    try:
        lines = [text for text in path.read_text(errors="replace").splitlines() if text.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _ProgressLine:
    """One line per finished cell, with the overall count and an ETA from the mean cell time."""

    def __init__(self, total: int, jobs: int, line: Callable[[str], None]) -> None:
        self.total, self.jobs, self.line = total, jobs, line
        self.done = 0
        self.seconds: list[float] = []

    def finished(self, task: Task, status: str, seconds: float, error: str | None) -> None:
        self.done += 1
        self.seconds.append(seconds)
        left = self.total - self.done
        eta = sum(self.seconds) / len(self.seconds) * math.ceil(left / self.jobs)
        detail = status
        if status == "complete":
            results = json.loads((task.run_dir / "results.json").read_text())
            detail = (
                f"valid R@20 {results['valid']['Recall@20']:.4f} "
                f"test R@20 {results['test']['Recall@20']:.4f}"
            )
        elif error:
            detail = f"{status}: {error}"
        self.line(
            f"[{self.done}/{self.total}] {task.name}: {detail} ({_duration(seconds)})"
            + (f" | ETA {_duration(eta)}" if left else "")
        )


def _payload(task: Task, threads: int, device: str) -> dict:
    return {
        "config": {**task.config, "device": device},
        "out": str(task.run_dir),
        "threads": threads,
    }


def run_local(
    tasks: list[Task],
    jobs: int,
    threads: int,
    devices: list[str],
    on_start: Callable[[Task], None],
    on_finish: Callable[[Task, int, float], None],
) -> None:
    """Run tasks as `python -m rearm.studies.worker` processes, `jobs` at a time; worker slot s
    gets devices[s % len(devices)]."""
    pending = list(tasks)
    running: dict[int, tuple[subprocess.Popen, Task, float, object]] = {}  # slot -> process
    environment = {**os.environ, **thread_environment(threads)}
    try:
        while pending or running:
            for slot in range(jobs):
                if slot in running or not pending:
                    continue
                task = pending.pop(0)
                on_start(task)
                task.log.parent.mkdir(parents=True, exist_ok=True)
                payload = _payload(task, threads, devices[slot % len(devices)])
                mode = "a" if resuming(payload) else "w"
                log = open(task.log, mode)  # noqa: SIM115  (closed when the process ends)
                process = subprocess.Popen(
                    [sys.executable, "-m", "rearm.studies.worker", json.dumps(payload)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    # own session: a terminal's Ctrl-C reaches only the study, which stops the
                    # cells itself (a cell seeing SIGINT would save a partial run as its result)
                    start_new_session=True,
                )
                running[slot] = (process, task, time.perf_counter(), log)
            for slot, (process, task, started, log) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                log.close()
                del running[slot]
                on_finish(task, code, time.perf_counter() - started)
            time.sleep(0.2)
    except BaseException:  # Ctrl-C, or a failure of the study itself: no cell outlives it
        stop_processes([entry[0] for entry in running.values()])
        for entry in running.values():
            entry[3].close()
        raise


def stop_processes(processes: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM each worker's process group, SIGKILL what is left after `grace_s`."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
