"""The life cycle of a run directory, recorded in RUN_DIR/status.json (written atomically at each
transition):

  running -> complete      every epoch (or early stop) done, results.json and model/ written
          -> interrupted   SIGINT / SIGTERM: stopped after a batch, everything from the best epoch
                           written
          -> diverged      a non-finite loss term or gradient; best epoch so far kept
          -> failed        an unexpected error (the message is recorded)

While a run trains, its process holds an exclusive lock on RUN_DIR/.lock; a directory whose
status says `running` but whose lock is free was left by a process that died (kill -9, power
loss), and later commands report it as such.

A run that is interrupted, killed or failed continues with `rearm train --resume RUN_DIR` (see
rearm.experiments.run.resume_run) when it wrote RUN_DIR/resume.pt (training key resume_every_s);
a complete or diverged run has none.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from rearm.errors import RunError
from rearm.io import write_json

STATUS_FILE = "status.json"
LOCK_FILE = ".lock"
RESUME_FILE = "resume.pt"
STATES = ("running", "complete", "interrupted", "failed", "diverged")
# files a run writes; anything else in RUN_DIR is not ours
RUN_ARTIFACTS = (
    "config.yaml",
    "protocol.json",
    "metrics.jsonl",
    "results.json",
    "checkpoint.pt",
    RESUME_FILE,
    "per_user.npz",
    STATUS_FILE,
    LOCK_FILE,
    "model",
)


def write_status(run_dir: str | os.PathLike, state: str, **details) -> dict:
    """Record `state` (one of STATES) with `details`; returns the record."""
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    record = {
        "status": state,
        "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **details,
    }
    write_json(Path(run_dir) / STATUS_FILE, record)
    return record


def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The run's status record, or None if RUN_DIR holds no run. A `running` record whose lock
    is free gets `"alive": False` (its process died); a run from before status.json existed is
    `complete` if it has results.json and `failed` otherwise."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or record.get("status") not in STATES:
                raise ValueError("no known status")
        except (OSError, ValueError) as error:
            return {"status": "failed", "error": f"{path}: unreadable status ({error})"}
        if record["status"] == "running":
            record["alive"] = is_locked(run_dir)
        return record
    if (run_dir / "results.json").is_file():
        return {"status": "complete", "note": "no status.json (run written by an older rearm)"}
    # the lock alone is not a run: a fresh run takes it before writing anything
    if any((run_dir / name).exists() for name in RUN_ARTIFACTS if name != LOCK_FILE):
        return {"status": "failed", "error": "no status.json and no results.json"}
    return None


def describe(record: dict) -> str:
    """One line: 'complete', 'running (process 12 on host)', 'failed: <error>', ..."""
    state = record["status"]
    if state == "running":
        if record.get("alive", True):
            return f"running (process {record.get('pid')} on {record.get('host')})"
        return (
            f"not complete: its process ({record.get('pid')} on {record.get('host')}) "
            "stopped without finishing (killed or crashed)"
        )
    if state == "diverged" and "where" in record:
        where = record["where"]
        return f"diverged (epoch {where['epoch']}, step {where['step']}: {where['term']})"
    if state == "failed":
        return f"failed ({record.get('error', 'unknown error')})"
    if state == "interrupted":
        return f"interrupted ({record.get('signal', 'signal')} in epoch {record.get('epoch')})"
    return state


def resume_hint(run_dir: str | os.PathLike) -> str:
    """How to continue the run when RUN_DIR holds a resume state, else ''."""
    path = Path(run_dir) / RESUME_FILE
    if not path.is_file():
        return ""
    return f"; `rearm train --resume {run_dir}` continues it from {RESUME_FILE}"


def require_model(run_dir: str | os.PathLike) -> dict | None:
    """For `evaluate` / `recommend`: RunError naming the state of a run that has no usable
    model; returns the status record (None if RUN_DIR holds no run)."""
    record = read_status(run_dir)
    if record is None or record["status"] == "complete":
        return record
    has_model = (Path(run_dir) / "model" / "bundle.json").is_file()
    if record["status"] in ("interrupted", "diverged") and has_model:
        return record  # a model from the best epoch before the stop exists
    raise RunError(
        f"{run_dir}: run is {describe(record)}; it has no saved model{resume_hint(run_dir)}"
    )


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold RUN_DIR/.lock exclusively for the block; RunError if another process holds it."""
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): status alone tells
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    handle = open(path, "a")  # noqa: SIM115 (held for the whole block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir}: another rearm process is writing this run") from None
        yield
    finally:
        handle.close()


def is_locked(run_dir: str | os.PathLike) -> bool:
    """True if a live process holds RUN_DIR/.lock."""
    try:
        import fcntl
    except ImportError:
        return True
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
