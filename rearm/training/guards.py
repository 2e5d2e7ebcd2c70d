"""Two small guards the training loop calls between steps, kept out of the loop itself:

* `DivergenceGuard`: a non-finite loss term or gradient stops training with an error naming the
  epoch, step and term. The per-step flags are computed on the device and read back every
  `check_every` steps (every step on the CPU, where reading is free; every 50 steps on a GPU, so
  the loop does not wait on the device each step); the first bad step is then located exactly.
* `stop_signals()` / `stop_point()`: SIGINT and SIGTERM ask training to stop after the current
  batch (what `timeout`, batch schedulers, container runtimes and study executors send).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from rearm.errors import RunError


class DivergenceError(RunError):
    """Training produced a non-finite loss term or gradient; `where` says where."""

    def __init__(self, where: dict, kept: str | None = None) -> None:
        self.where = where
        super().__init__(
            f"training diverged in epoch {where['epoch']}, step {where['step']}: "
            f"{where['term']} is not finite" + (f"; kept the {kept}" if kept else "")
        )


class DivergenceGuard:
    """Call `after_backward(epoch, step, terms)` once per step after `backward()` and
    `end_epoch()` after the last step of an epoch; either raises DivergenceError."""

    def __init__(self, parameters: list[torch.nn.Parameter], check_every: int | None = None):
        self.parameters = parameters
        device = parameters[0].device if parameters else torch.device("cpu")
        self.check_every = check_every or (1 if device.type == "cpu" else 50)
        self._pending: list[tuple[int, int, list[str], Tensor]] = []

    def after_backward(self, epoch: int, step: int, terms: Mapping[str, Tensor]) -> None:
        # float32 so that terms of mixed precision stack
        values = torch.stack([value.detach().reshape(()).float() for value in terms.values()])
        self.after_step(epoch, step, list(terms), values)

    def after_step(self, epoch: int, step: int, names: list[str], values: Tensor) -> None:
        """The same check from the step's stacked loss terms `values` [len(names)] (what
        rearm.training.trainer.TrainStep keeps on the device) and the parameters' gradients."""
        grads = [p.grad for p in self.parameters if p.grad is not None]
        values = list(values.detach().float().reshape(-1))
        if grads:  # one fused pass over every gradient: the norm is finite iff all entries are
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
            values.append(norm.float().to(values[0].device))
        flags = ~torch.isfinite(torch.stack(values))
        names = [f"loss term {name!r}" for name in names] + ["the gradient"]
        self._pending.append((epoch, step, names, flags))
        if len(self._pending) >= self.check_every:
            self.flush()

    def end_epoch(self) -> None:
        self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        bad = torch.stack([flags.any() for *_, flags in pending]).cpu()  # one device read
        if not bool(bad.any()):
            return
        epoch, step, names, flags = pending[int(bad.nonzero()[0, 0])]
        term = names[int(flags.cpu().nonzero()[0, 0])]
        raise DivergenceError({"epoch": epoch, "step": step, "term": term})


class _StopState:
    def __init__(self) -> None:
        self.installed = False
        self.deferring = False
        self.requested: str | None = None
        self.last: str | None = None


_STOP = _StopState()


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    _STOP.last = name
    if _STOP.deferring and _STOP.requested is None:
        _STOP.requested = name  # finish the batch; stop_point() raises after it
        return
    raise KeyboardInterrupt(name)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise KeyboardInterrupt, except inside
    `deferred_stop()`, where the first one only asks `stop_point()` to raise (a second one
    raises at once). Only the main thread can install signal handlers; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread() or _STOP.installed:
        yield
        return
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    _STOP.installed, _STOP.requested, _STOP.last = True, None, None
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _STOP.installed, _STOP.deferring = False, False


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Within the block a stop signal waits for the next `stop_point()`."""
    was = _STOP.deferring
    _STOP.deferring = True
    try:
        yield
    finally:
        _STOP.deferring = was


def stop_point() -> None:
    """Raise KeyboardInterrupt if a stop signal arrived (the training loop calls this between
    batches); a no-op when stop_signals() is not active."""
    if _STOP.requested is not None and _STOP.deferring:
        name, _STOP.requested = _STOP.requested, None
        raise KeyboardInterrupt(name)


def stop_requested() -> str | None:
    """The name of a stop signal that arrived and was not yet acted on, or None."""
    return _STOP.requested


def last_signal() -> str | None:
    """The name of the last stop signal received inside stop_signals(), or None."""
    return _STOP.last
