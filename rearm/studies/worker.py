"""One study cell in its own process: `python -m rearm.studies.worker PAYLOAD_JSON`.

The payload is {"config": RunConfig.to_dict(), "out": run dir, "threads": n}. The cell trains
through `rearm.experiments.run.train_run`, the same function as `rearm train`, or continues
through `resume_run` (`rearm train --resume`) when the run directory holds a stopped run with a
resume state (the study engine has checked that it is this cell's). Exit codes: 0 the run is
complete, 2 a rearm error (one line on stderr), 3 interrupted before completion.
"""

from __future__ import annotations

import json
import os
import sys

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def thread_environment(threads: int) -> dict[str, str]:
    """The environment variables that bound every thread pool of a cell to `threads`."""
    return {name: str(threads) for name in THREAD_VARIABLES}


def resuming(payload: dict) -> bool:
    """Whether the cell continues a stopped run (its run directory kept a resume state): its
    log is then appended to, not replaced."""
    from rearm.experiments.status import RESUME_FILE

    return os.path.isfile(os.path.join(payload["out"], RESUME_FILE))


def run_cell(payload: dict) -> dict:
    """Train one cell in this process; returns its results. Sets the thread variables first
    (they must precede the first import of numba / the BLAS libraries to take effect)."""
    os.environ.update(thread_environment(payload["threads"]))
    import torch

    from rearm.experiments.config import RunConfig
    from rearm.experiments.run import resume_run, train_run
    from rearm.training.trainer import Progress

    torch.set_num_threads(payload["threads"])
    config = RunConfig(**payload["config"])
    progress = Progress(stream=sys.stderr, every_s=60.0, enabled=True)
    if resuming(payload):
        return resume_run(payload["out"], device=config.device, progress=progress)
    return train_run(config, payload["out"], force=True, progress=progress)


def main(argv: list[str]) -> int:
    from rearm.errors import RearmError

    payload = json.loads(argv[1])
    try:
        results = run_cell(payload)
    except RearmError as error:
        print(f"rearm: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 3
    return 3 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
