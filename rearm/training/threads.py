"""Thread pools of a run: torch (OpenMP / MKL), numba and the BLAS numpy loaded (OpenBLAS)."""

from __future__ import annotations

import ctypes
import os

import torch

from rearm.errors import ConfigError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# names of OpenBLAS's setter in the builds numpy / scipy wheels ship
_OPENBLAS_SETTERS = (
    "openblas_set_num_threads",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
)


def set_threads(threads: int) -> dict[str, int]:
    """Use `threads` threads in every pool of this process (and in child processes, through
    the environment). Returns {pool: threads set}; numba is capped at the size it started with.

    Raises:
        ConfigError: threads < 1.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be an integer >= 1, got {threads!r}")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    done = {}
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        pass
    else:
        done["numba"] = min(threads, numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(done["numba"])
    blas = _openblas_libraries()
    for setter in blas:
        setter(threads)
    if blas:
        done["openblas"] = threads
    # last: the other pools' setters may reset the OpenMP default torch reads
    torch.set_num_threads(threads)
    done["torch"] = torch.get_num_threads()
    return done


def _openblas_libraries() -> list:
    """The thread setters of the OpenBLAS libraries mapped into this process."""
    import numpy  # noqa: F401  (loads numpy's BLAS)

    paths = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path).lower():
                    paths.add(path)
    except OSError:  # not Linux: leave BLAS to the environment variables
        return []
    setters = []
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setters.append(setter)
                break
    return setters
