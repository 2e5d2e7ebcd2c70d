"""A model-agnostic training loop: seeds, epochs of shuffled (user, positive, negative) triples,
early stopping on the validation metric, the best state kept, graceful Ctrl-C, and resume states
from which an interrupted or killed run continues exactly where it was. It knows nothing about
REARM: models follow the contract in rearm.models.base; per-epoch model work goes through
`on_epoch_start`, per-epoch bookkeeping through the callbacks."""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from rearm.data.dataset import Dataset
from rearm.data.sampling import NegativeSampler, epoch_triples
from rearm.errors import ConfigError
from rearm.evaluation.protocol import Protocol
from rearm.models.base import Recommender
from rearm.training.guards import DivergenceError, DivergenceGuard, stop_point


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds the legacy global RNG that user code may use)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda[:N]" must exist (ConfigError otherwise)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: not a device name: {device!r}") from None


def make_optimizer(
    parameters: list[torch.nn.Parameter],
    learning_rate: float,
    weight_decay: float,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """AdamW; the fused implementation (same update rule, one kernel for all tensors) where the
    parameters allow it: >10x faster than the per-tensor loop on REARM's large feature tables.
    capturable: keep the step count on the device, so that the step can be captured in a CUDA
    graph (same update rule)."""
    fusable = all(
        p.dtype in (torch.float32, torch.float64) and p.device.type in ("cpu", "cuda")
        for p in parameters
    )
    return torch.optim.AdamW(
        parameters,
        lr=learning_rate,
        weight_decay=weight_decay,
        fused=fusable or None,
        capturable=capturable,
    )


def autocast_context(device: torch.device, precision: str):
    """The autocast context of `precision` ("fp32": none; "bf16": bfloat16 autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16")
    # no weight-cast cache: it must not outlive a CUDA graph capture (and every weight is used
    # about once per step anyway)
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


class TrainStep:
    """One optimisation step on a batch of triples: the model's named loss terms, their sum's
    backward, the optimiser step, and the terms added to running totals kept on the device.
    Nothing in a step waits for the device: read `mean_terms()` (one synchronisation) when the
    numbers are wanted.

    With `cuda_graph=True`, a CUDA device and a model that declares `capturable`, the step of a
    full batch is captured once into a CUDA graph (after a few eager warm-up steps on a side
    stream, as CUDA graph capture requires) and replayed: forward, backward and AdamW become one
    graph launch. The model then runs with `static_shapes` set. Batches of another size (the
    last one of an epoch) run eagerly through the same function. If capture fails, every step
    runs eagerly and `graph_error` says why.
    """

    WARMUP_STEPS = 3

    def __init__(
        self,
        model: Recommender,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        precision: str = "fp32",
        cuda_graph: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.precision = precision
        autocast_context(self.device, precision)  # fails early on an unsupported precision
        self.use_graph = bool(
            cuda_graph and self.device.type == "cuda" and getattr(model, "capturable", False)
        )
        if self.use_graph:
            model.static_shapes = True
        self.graph = None
        self.graph_error: str | None = None
        self.names: list[str] | None = None
        self.totals: Tensor | None = None
        self.last_values: Tensor | None = None
        self.steps = 0
        self._eager_steps = 0
        self._static: tuple[Tensor, Tensor, Tensor] | None = None

    def _compute(self, users: Tensor, pos: Tensor, neg: Tensor) -> None:
        with autocast_context(self.device, self.precision):
            terms = self.model.loss(users, pos, neg)
        if self.names is None:
            self.names = list(terms)
            self.totals = torch.zeros(len(self.names), device=self.device)
        values = torch.stack([terms[name].float() for name in self.names])
        self.optimizer.zero_grad(set_to_none=True)
        values.sum().backward()
        self.optimizer.step()
        # the step's terms, for the divergence guard (inside a CUDA graph: a static output that
        # every replay rewrites)
        self.last_values = values.detach()
        self.totals += self.last_values

    def __call__(self, users: Tensor, pos: Tensor, neg: Tensor) -> None:
        self.steps += 1
        full = len(users) == self.batch_size
        if self.graph is not None and full:
            for static, value in zip(self._static, (users, pos, neg)):
                static.copy_(value, non_blocking=True)
            self.graph.replay()
            return
        if not (self.use_graph and full and self.graph_error is None):
            self._compute(users, pos, neg)
            return
        if self._eager_steps < self.WARMUP_STEPS:
            # warm-up on a side stream: allocator pools, optimiser state, library handles
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._compute(users, pos, neg)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return
        self._capture(users, pos, neg)

    def _capture(self, users: Tensor, pos: Tensor, neg: Tensor) -> None:
        self._static = tuple(value.clone() for value in (users, pos, neg))
        graph = torch.cuda.CUDAGraph()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self._compute(*self._static)
        except Exception as error:  # noqa: BLE001  (any capture failure falls back to eager)
            self.graph_error = f"{type(error).__name__}: {error}".splitlines()[0]
            self.model.static_shapes = False
            torch.cuda.synchronize(self.device)
            self._compute(users, pos, neg)
            return
        self.graph = graph
        graph.replay()  # capture records the work without doing it

    def reset(self) -> None:
        """Zero the running totals (start of an epoch)."""
        if self.totals is not None:
            self.totals.zero_()
        self.steps = 0

    def running_state(self) -> dict:
        """The running totals of the epoch so far (for a resume state)."""
        totals = None if self.totals is None else self.totals.detach().cpu().clone()
        return {"names": self.names, "totals": totals, "steps": self.steps}

    def load_running_state(self, state: dict) -> None:
        """Continue the running totals saved by `running_state` (after `reset()`)."""
        if state["totals"] is not None:
            self.names = list(state["names"])
            self.totals = state["totals"].to(self.device).clone()
        self.steps = int(state["steps"])

    def mean_terms(self) -> dict[str, float]:
        """{term: mean over the steps since reset()}: one device synchronisation."""
        if self.totals is None or self.steps == 0:
            return {}
        values = (self.totals / self.steps).tolist()
        return dict(zip(self.names, values))


@dataclass
class EpochRecord:
    epoch: int
    losses: dict[str, float]
    valid: dict[str, float]
    train_s: float
    eval_s: float

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            **{f"loss_{name}": value for name, value in self.losses.items()},
            "valid": self.valid,
            "train_s": round(self.train_s, 4),
            "eval_s": round(self.eval_s, 4),
        }


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    history: list[EpochRecord] = field(default_factory=list)
    interrupted: bool = False
    stopped_early: bool = False
    cuda_graph: bool = False  # whether the training step ran as a captured CUDA graph
    diverged: dict | None = None  # {epoch, step, term} of the first non-finite value
    resume_saves: int = 0  # resume states handed to on_resume_state
    resume_save_s: float = 0.0  # seconds that took (left out of the epochs' train_s)


class Progress:
    """Progress on stderr: an in-place line on a terminal (at most every `tty_every_s`), a line
    every `every_s` seconds otherwise."""

    def __init__(
        self,
        stream=None,
        every_s: float = 10.0,
        enabled: bool = True,
        tty_every_s: float = 0.5,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = tty_every_s if self.tty else every_s
        self.enabled = enabled
        self._last = -math.inf

    def due(self) -> bool:
        """Whether update() would print now (callers skip computing the text otherwise, e.g. a
        loss that would have to be read from the GPU)."""
        return self.enabled and time.perf_counter() - self._last >= self.every_s

    def update(self, text: str) -> None:
        if not self.due():
            return
        self.stream.write(("\r\033[K" + text) if self.tty else (text + "\n"))
        self.stream.flush()
        self._last = time.perf_counter()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def evaluate_split(
    model: Recommender,
    dataset: Dataset,
    protocol: Protocol,
    split: str,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking metrics of `model` on `split` under `protocol` (model put in eval mode)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        embeddings = model.embed()
        metrics = protocol.evaluate(
            lambda users: model.score(users, embeddings), dataset, split, batch_size
        )
    model.train(was_training)
    return metrics


def _keep_best(best_state: dict | None, model: Recommender) -> dict:
    """The model's state as the new best: the first time a copy, later copied into that copy.

    Copying in place keeps one best state alive instead of two while the new one is made (the
    old copy lives until the new one is assigned): 2.4 GB less at the validations after the
    first at 10x Clothing. An entry whose shape, dtype or kind changed is copied anew.
    """
    state = model.state_dict()
    if best_state is None or best_state.keys() != state.keys():
        return copy.deepcopy(state)
    for key, value in state.items():
        kept = best_state[key]
        if (
            isinstance(value, torch.Tensor)
            and isinstance(kept, torch.Tensor)
            and kept.shape == value.shape
            and kept.dtype == value.dtype
            and kept.layout == value.layout == torch.strided
        ):
            kept.copy_(value)
        else:
            best_state[key] = copy.deepcopy(value)
    return best_state


RESUME_FORMAT = 1


def _rng_state(generator: torch.Generator, rng: np.random.Generator, device: torch.device) -> dict:
    """Every random state training draws from: torch's (and the device's), the loop's own
    generator and numpy Generator, python's and numpy's global ones (only plain values and tensors,
    so that a resume state loads with torch.load(weights_only=True))."""
    legacy = np.random.get_state(legacy=False)  # noqa: NPY002  (seed_everything seeds it too)
    legacy["state"] = dict(legacy["state"], key=legacy["state"]["key"].tolist())
    return {
        "torch": torch.get_rng_state(),
        "device": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generator": generator.get_state(),
        "numpy": rng.bit_generator.state,
        "python": random.getstate(),
        "numpy_global": legacy,
    }


def _set_rng_state(
    state: dict, generator: torch.Generator, rng: np.random.Generator, device: torch.device
) -> None:
    torch.set_rng_state(state["torch"])
    if state["device"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["device"], device)
    generator.set_state(state["generator"])
    rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])
    legacy = dict(state["numpy_global"])
    legacy["state"] = dict(legacy["state"], key=np.asarray(legacy["state"]["key"], np.uint32))
    np.random.set_state(legacy)  # noqa: NPY002


def fit(
    model: Recommender,
    dataset: Dataset,
    protocol: Protocol,
    *,
    epochs: int,
    patience: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    eval_batch_size: int = 1024,
    eval_every: int = 1,
    precision: str = "fp32",
    cuda_graph: bool = True,
    selection_metric: str | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    on_improve: Callable[[EpochRecord, Recommender], None] | None = None,
    progress: Progress | None = None,
    resume_every_s: float = 0.0,
    on_resume_state: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    max_steps_per_epoch: int = 0,
) -> FitResult:
    """Train `model` with AdamW on BPR-style triples; keep the best validation state.

    Validation runs every `eval_every` epochs and after the last one; `patience` counts
    validations without gain (with eval_every=1, epochs). Epochs without validation are
    recorded with empty `valid` metrics. `precision` "bf16" trains under bfloat16 autocast;
    `cuda_graph` captures the step in a CUDA graph on a GPU (see TrainStep).
    `max_steps_per_epoch` > 0 trains each epoch on the first that many batches of its shuffled
    triples only (validation and everything after it run as usual).

    After return the model holds the parameters of the best validation epoch (test metrics are
    the caller's to compute, once, from that state). Ctrl-C stops after the current batch and
    returns normally with `interrupted=True` (so do SIGINT / SIGTERM inside
    `rearm.training.guards.stop_signals()`); a non-finite loss term or gradient stops at once and
    returns with `diverged` = {epoch, step, term}.

    Resume states: with `resume_every_s` > 0, `on_resume_state(state)` receives, between two
    steps, at most every `resume_every_s` seconds, and once more when a stop signal ends
    training, a dict of tensors and plain values holding everything the rest of training
    depends on: the model's and the optimiser's state, every random state, the position in the
    epoch (the epoch's triples are drawn again from the random states at its start), the running
    losses, the history and the best state so far. `fit(..., resume=state)` on a model built the
    same way from the same data continues from there and ends with exactly the parameters,
    history and best epoch of a run that was never stopped (it releases the state's model and
    optimiser tensors once loaded, so a state resumes once). `on_epoch_start` must therefore
    depend on the epoch and the generator only.
    """
    if eval_every < 1:
        raise ConfigError(f"eval_every must be >= 1, got {eval_every}")
    if max_steps_per_epoch < 0:
        raise ConfigError(f"max_steps_per_epoch must be >= 0, got {max_steps_per_epoch}")
    progress = progress or Progress()
    selection_metric = selection_metric or protocol.selection_metric
    device = next(model.parameters()).device
    parameters = [p for p in model.parameters() if p.requires_grad]
    graphed = cuda_graph and device.type == "cuda" and getattr(model, "capturable", False)
    optimizer = make_optimizer(parameters, learning_rate, weight_decay, capturable=graphed)
    step = TrainStep(
        model, optimizer, batch_size=batch_size, precision=precision, cuda_graph=cuda_graph
    )
    sampler = NegativeSampler(protocol.negative_exclusion_matrix(dataset), seed=seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    guard = DivergenceGuard(model.gradient_checked_parameters())

    best_value, best_epoch, best_valid, best_state = -math.inf, 0, {}, None
    history: list[EpochRecord] = []
    interrupted = stopped_early = False
    evaluations_since_best = 0
    diverged = None
    epoch = first_epoch = 1
    if resume is not None:
        if resume.get("format") != RESUME_FORMAT:
            raise ConfigError(
                f"resume state: format {resume.get('format')!r} is not {RESUME_FORMAT}"
            )
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        # loaded: drop the state's copies, or they stay alive beside the model for the whole run
        # (2.3 GB at 10x Clothing)
        resume["model"] = resume["optimizer"] = None
        history = [EpochRecord(**record) for record in resume["history"]]
        best = resume["best"]
        best_value, best_epoch, best_valid = best["value"], best["epoch"], best["valid"]
        best_state = best["state"]
        evaluations_since_best, stopped_early = best["evaluations_since_best"], best["stopped"]
        first_epoch = resume["epoch"]
        if resume["epoch_start"] is None:
            _set_rng_state(resume["rng"], generator, rng, device)
            progress.line(f"resuming at the start of epoch {first_epoch}")
    # where the loop is: ("in", epoch, batches done, rng states at the epoch's start, seconds
    # trained in it), ("between", next epoch), or None inside a step (no consistent state)
    position: tuple | None = None
    last_saved = time.perf_counter()

    def resume_state() -> dict:
        guard.flush()
        inside = position[0] == "in"
        return {
            "format": RESUME_FORMAT,
            "epoch": position[1],
            "batch": position[2] if inside else 0,
            "num_batches": num_batches if inside else None,
            "epoch_start": position[3] if inside else None,
            "train_s": time.perf_counter() - position[4] if inside else 0.0,
            "rng": _rng_state(generator, rng, device),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "running": step.running_state() if inside else None,
            "history": [vars(record) for record in history],
            "best": {
                "value": best_value,
                "epoch": best_epoch,
                "valid": best_valid,
                "state": best_state,
                "evaluations_since_best": evaluations_since_best,
                "stopped": stopped_early,
            },
        }

    saves = {"count": 0, "seconds": 0.0}

    def save_resume_state(now: bool = False) -> float:
        """Hand a resume state to on_resume_state when one is due; the seconds it took."""
        nonlocal last_saved
        if on_resume_state is None or resume_every_s <= 0 or position is None:
            return 0.0
        begin = time.perf_counter()
        if not now and begin - last_saved < resume_every_s:
            return 0.0
        on_resume_state(resume_state())
        last_saved = time.perf_counter()
        saves["count"] += 1
        saves["seconds"] += last_saved - begin
        return last_saved - begin

    try:
        for epoch in range(first_epoch, epochs + 1):
            if stopped_early:
                break
            model.train()
            first_batch, trained_s = 0, 0.0
            resuming = resume is not None and epoch == first_epoch and resume["epoch_start"]
            if resuming:
                _set_rng_state(resume["epoch_start"], generator, rng, device)
            epoch_start = _rng_state(generator, rng, device)
            model.on_epoch_start(epoch, generator)
            start = time.perf_counter()
            users, pos, neg = (
                torch.from_numpy(a).to(device) for a in epoch_triples(dataset.train, sampler, rng)
            )
            num_batches = max(1, math.ceil(len(users) / batch_size))
            if 0 < max_steps_per_epoch < num_batches:
                if epoch == first_epoch:
                    progress.line(
                        f"max_steps_per_epoch: each epoch trains {max_steps_per_epoch} of its "
                        f"{num_batches} steps"
                    )
                num_batches = max_steps_per_epoch
            step.reset()
            if resuming:
                if resume["num_batches"] != num_batches:
                    raise ConfigError(
                        f"resume state: epoch {epoch} had {resume['num_batches']} batches, "
                        f"this data and batch size give {num_batches}"
                    )
                _set_rng_state(resume["rng"], generator, rng, device)
                step.load_running_state(resume["running"])
                first_batch, trained_s = resume["batch"], resume["train_s"]
                progress.line(f"resuming epoch {epoch} at step {first_batch}/{num_batches}")
            start = time.perf_counter() - trained_s
            position = ("in", epoch, first_batch, epoch_start, start)
            for batch in range(first_batch, num_batches):
                position = None
                part = slice(batch * batch_size, (batch + 1) * batch_size)
                step(users[part], pos[part], neg[part])
                guard.after_step(epoch, batch + 1, step.names, step.last_values)
                position = ("in", epoch, batch + 1, epoch_start, start)
                if progress.due():  # the only read of the losses inside an epoch
                    running = sum(step.mean_terms().values())
                    progress.update(f"epoch {epoch} [{batch + 1}/{num_batches}] loss {running:.4f}")
                stop_point()
                start += save_resume_state()  # an epoch's train_s leaves the saving out
            guard.end_epoch()
            losses = step.mean_terms()
            train_s = time.perf_counter() - start
            evaluate = epoch % eval_every == 0 or epoch == epochs
            start = time.perf_counter()
            valid = (
                evaluate_split(model, dataset, protocol, "valid", eval_batch_size)
                if evaluate
                else {}
            )
            eval_s = time.perf_counter() - start
            record = EpochRecord(epoch, losses, valid, train_s, eval_s)
            position = None
            history.append(record)
            improved = evaluate and valid[selection_metric] > best_value
            if improved:
                best_value, best_epoch, best_valid = valid[selection_metric], epoch, valid
                best_state = _keep_best(best_state, model)
                evaluations_since_best = 0
            elif evaluate:
                evaluations_since_best += 1
            stopped_early = evaluations_since_best >= patience and evaluate
            position = ("between", epoch + 1)
            summary = (
                f" | valid {selection_metric}={valid[selection_metric]:.4f}"
                f" NDCG@20={valid.get('NDCG@20', float('nan')):.4f}"
                if evaluate
                else ""
            )
            progress.line(
                f"epoch {epoch}: "
                + " ".join(f"{k}={v:.4g}" for k, v in losses.items())
                + summary
                + f" | {train_s:.1f}s train {eval_s:.1f}s eval"
                + (" *" if improved else "")
            )
            if on_epoch_end is not None:
                on_epoch_end(record)
            if improved and on_improve is not None:
                on_improve(record, model)
            if stopped_early:
                unit = "epochs" if eval_every == 1 else f"validations (every {eval_every} epochs)"
                progress.line(f"early stop: no {selection_metric} gain in {patience} {unit}")
                break
    except KeyboardInterrupt as stop:
        interrupted = True
        progress.line(
            f"interrupted ({stop or 'SIGINT'}) in epoch {epoch}; keeping the best epoch ({best_epoch})"
        )
        try:
            save_resume_state(now=True)
        except DivergenceError as error:  # found by the check the state flushes first
            diverged = error.where
            progress.line(f"{error}; stopped, keeping the best epoch ({best_epoch})")
    except DivergenceError as error:
        diverged = error.where
        progress.line(f"{error}; stopped, keeping the best epoch ({best_epoch})")
    if step.graph_error is not None:
        progress.line(f"CUDA graph capture failed, trained eagerly ({step.graph_error})")
    if step.use_graph:
        model.static_shapes = False
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        best_epoch=best_epoch,
        best_valid=best_valid,
        epochs_run=len(history),
        history=history,
        interrupted=interrupted,
        stopped_early=stopped_early,
        cuda_graph=step.graph is not None,
        diverged=diverged,
        resume_saves=saves["count"],
        resume_save_s=saves["seconds"],
    )
