"""The Ray executor (`pip install 'rearm[ray]'`, `rearm study run ... --executor ray`): each cell is
a Ray task that reserves its share of CPUs (and GPUs) and trains through the same `run_cell` as a
local worker. With `--address` the study runs on an existing cluster; the study directory must
then be on a file system every node sees."""

from __future__ import annotations

import time
from collections.abc import Callable

from rearm.errors import ConfigError


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed (pip install 'rearm[ray]')"
        ) from None
    return ray


def _ray_cell(payload: dict, log: str) -> int:
    """Runs inside a Ray worker process: the cell's exit code as a local worker would give it;
    its progress goes to the cell's log file."""
    import contextlib

    from rearm.errors import RearmError
    from rearm.studies.worker import resuming, run_cell

    with (
        open(log, "a" if resuming(payload) else "w") as handle,
        contextlib.redirect_stderr(handle),
    ):
        try:
            results = run_cell(payload)
        except RearmError as error:
            print(f"rearm: error: {error}", file=handle)
            return 2
    return 3 if results.get("interrupted") else 0


def run_ray(
    tasks: list,
    jobs: int,
    threads: int,
    devices: list[str],
    address: str | None,
    on_start: Callable,
    on_finish: Callable,
) -> None:
    """Submit at most `jobs` cells at a time as Ray tasks with num_cpus=threads; on CUDA each cell
    asks for 1 / (jobs per device) of a GPU, so `jobs` cells share the listed devices."""
    from rearm.studies.engine import _payload

    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address,
            num_cpus=None if address else max(threads, threads * jobs),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    cuda = any(device.startswith("cuda") for device in devices)
    gpu_share = len(devices) / max(jobs, len(devices)) if cuda else 0
    remote = ray.remote(_ray_cell).options(num_cpus=threads, num_gpus=gpu_share, max_retries=0)
    pending = list(tasks)
    running: dict = {}  # object ref -> (task, start time)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                on_start(task)
                # Ray sets CUDA_VISIBLE_DEVICES for the task, so its GPU is always "cuda"
                payload = _payload(task, threads, "cuda" if cuda else "cpu")
                running[remote.remote(payload, str(task.log))] = (task, time.perf_counter())
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                task, started = running.pop(ref)
                try:
                    code = int(ray.get(ref))
                except Exception as error:  # a task that crashed (e.g. its worker died)
                    task.log.write_text(f"ray task failed: {type(error).__name__}: {error}\n")
                    code = 1
                on_finish(task, code, time.perf_counter() - started)
    except KeyboardInterrupt:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
