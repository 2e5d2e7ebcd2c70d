"""A faithful REARM training epoch against this machine's floor (benchmarks/floor.py), both
measured in the same run. Prints one JSON line with train_epoch_s, floor_epoch_s and their ratio.

    python benchmarks/training.py --data data/baby --preset baby [--device cpu|cuda]
    python benchmarks/training.py --data data/baby --preset baby --profile 6   # + where time goes
    python benchmarks/training.py --smoke                                       # tiny, seconds

The epoch is the trainer's own: one epoch of sampled triples (rearm.data.sampling) and
ceil(train / batch_size) steps of rearm.training.trainer.TrainStep (loss terms, backward, fused
AdamW; on a GPU the captured CUDA graph unless --set cuda_graph=false), timed from sampling to
the losses read at its end; validation is not part of it. `--steps N` times the first N steps
and scales to a full epoch (says so in the output: "extrapolated_from_steps").

--profile K runs K more steps under torch.profiler and splits the epoch time by component
(feature-table products, graph products, AdamW, item attention, everything else), each as
seconds per epoch and share (the profiler's self times, scaled to the measured epoch).
"""

# ruff: noqa: I001  (rearm is imported before torch on purpose)

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import rearm  # noqa: F401  (before torch allocates: rearm/__init__.py sets its allocator)
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from floor import add_arguments, at_least, build, measure_floor, run, steps_per_epoch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step(model, optimizer):
    """loss, backward, AdamW, as the trainer did before TrainStep (kept for profiling older
    checkouts side by side)."""

    def step(users, pos, neg) -> None:
        loss = sum(model.loss(users, pos, neg).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def make_step(model, config):
    from rearm.training.trainer import make_optimizer

    training = config.training
    parameters = [p for p in model.parameters() if p.requires_grad]
    try:
        from rearm.training.trainer import TrainStep
    except ImportError:  # a checkout from before TrainStep
        optimizer = make_optimizer(parameters, training["learning_rate"], training["weight_decay"])
        return plain_step(model, optimizer), lambda: None, lambda: False
    device = next(model.parameters()).device
    graphed = (
        training.get("cuda_graph", True)
        and device.type == "cuda"
        and getattr(model, "capturable", False)
    )
    optimizer = make_optimizer(
        parameters, training["learning_rate"], training["weight_decay"], capturable=graphed
    )
    step = TrainStep(
        model,
        optimizer,
        batch_size=training["batch_size"],
        precision=training.get("precision", "fp32"),
        cuda_graph=training.get("cuda_graph", True),
    )
    try:
        from rearm.training.guards import DivergenceGuard
    except ImportError:  # a checkout from before the divergence guard
        return step, step.mean_terms, lambda: step.graph is not None
    # what fit() runs per step: the step, then the divergence guard's device-side check
    checked = getattr(model, "gradient_checked_parameters", lambda: parameters)()
    guard = DivergenceGuard(checked)

    def guarded_step(users, pos, neg):
        step(users, pos, neg)
        guard.after_step(0, step.steps, step.names, step.last_values)

    guarded_step.reset = step.reset

    def read_losses():
        guard.end_epoch()
        return step.mean_terms()

    return guarded_step, read_losses, lambda: step.graph is not None


def time_epoch(model, dataset, config, steps: int | None, epochs: int = 1, warmup: int = 5) -> dict:
    """Seconds of one training epoch (median over `epochs`), after `warmup` untimed steps (JIT
    kernels, first touch of buffers, CUDA graph capture)."""
    from rearm.data.sampling import NegativeSampler, epoch_triples
    from rearm.evaluation.protocol import get_protocol

    device = next(model.parameters()).device
    batch_size = config.training["batch_size"]
    protocol = get_protocol(config.protocol)
    sampler = NegativeSampler(protocol.negative_exclusion_matrix(dataset), seed=config.seed)
    rng = np.random.default_rng(config.seed)
    step, read_losses, graphed = make_step(model, config)
    total = steps_per_epoch(dataset, batch_size)
    run = total if steps is None else min(steps, total)
    model.train()
    users, pos, neg = (
        torch.from_numpy(a).to(device) for a in epoch_triples(dataset.train, sampler, rng)
    )
    for batch in range(min(warmup, total)):
        part = slice(batch * batch_size, (batch + 1) * batch_size)
        step(users[part], pos[part], neg[part])
    times, losses = [], {}
    for _ in range(epochs):
        _sync(device)
        start = time.perf_counter()
        users, pos, neg = (
            torch.from_numpy(a).to(device) for a in epoch_triples(dataset.train, sampler, rng)
        )
        if hasattr(step, "reset"):
            step.reset()
        for batch in range(run):
            part = slice(batch * batch_size, (batch + 1) * batch_size)
            step(users[part], pos[part], neg[part])
        losses = read_losses() or {}
        _sync(device)
        times.append((time.perf_counter() - start) * total / run)
    return {
        "train_epoch_s": round(float(np.median(times)), 3),
        "epoch_times_s": [round(t, 3) for t in times],
        "losses": losses,
        "cuda_graph": graphed(),
        "steps": run,
        "step_fn": step,
    }


def classify(key, model) -> str:
    """Component of one profiler row (name + input shapes)."""
    name = key.key
    shapes = [tuple(s) for s in (key.input_shapes or []) if isinstance(s, list | tuple)]
    if "adamw" in name.lower():
        return "adamw"
    if "ScalarTokenAttention" in name:
        return "item_attention"
    if name.startswith(("_GraphProduct", "_LayerMean")):
        # the numba CSR kernels inside the autograd functions (_LayerMean: LightGCN's layers,
        # each product fused with its layer-sum add)
        return "graph_products"
    nodes = {model.num_users + model.num_items, model.num_users, model.num_items}
    widths = {t.shape[1] for t in list(model.item_tables) + list(model.user_tables)}
    if name in ("aten::mm", "aten::addmm"):
        if any(len(s) == 2 and s[0] == s[1] and s[0] in nodes for s in shapes):
            return "graph_products"
        if any(len(s) == 2 and s[1] in widths and s[0] > 1000 for s in shapes) or any(
            len(s) == 2 and s[0] == model.dim and s[1] in nodes for s in shapes
        ):
            return "table_products"
    return "everything_else"


def profile(model, step, batches, train_epoch_s: float, steps_in_epoch: int, top: int = 0) -> dict:
    """Split train_epoch_s by component from torch.profiler self times over `batches`; with
    `top`, also the `top` largest operator rows (name and input shapes) outside the floor's
    components ("everything_else_top")."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    device = next(model.parameters()).device
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities, record_shapes=True) as prof:
        for users, pos, neg in batches:
            step(users, pos, neg)
        _sync(device)
    attribute = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals: dict[str, float] = {}
    rest = []
    for key in prof.key_averages(group_by_input_shape=True):
        part = classify(key, model)
        value = getattr(key, attribute, 0.0)
        totals[part] = totals.get(part, 0.0) + value
        if part == "everything_else":
            rest.append((value, key.key, str(key.input_shapes), key.count))
    whole = sum(totals.values()) or 1.0
    report = {
        part: {
            "s_per_epoch": round(train_epoch_s * value / whole, 2),
            "share": round(value / whole, 3),
        }
        for part, value in sorted(totals.items(), key=lambda item: -item[1])
    }
    if top:
        report["everything_else_top"] = [
            {
                "op": name,
                "shapes": shapes,
                "calls_per_step": count / len(batches),
                "s_per_epoch": round(train_epoch_s * value / whole, 3),
            }
            for value, name, shapes, count in sorted(rest, reverse=True)[:top]
        ]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument(
        "--steps", type=at_least(1), help="time only the first N steps, scaled to an epoch"
    )
    parser.add_argument("--epochs", type=at_least(1), default=1, help="timed epochs (median)")
    parser.add_argument("--warmup", type=at_least(0), default=5, help="untimed steps first")
    parser.add_argument(
        "--profile", type=at_least(0), default=0, metavar="K", help="profile K steps"
    )
    parser.add_argument(
        "--top",
        type=at_least(0),
        default=0,
        metavar="N",
        help="with --profile: the N largest other ops",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the floor measurement")
    parser.add_argument("--ready", help="(concurrent runs) create this file once built ...")
    parser.add_argument("--go", help="... then wait for this file before timing")
    args = parser.parse_args(argv)
    if args.threads is not None:
        from rearm.training.threads import set_threads

        set_threads(args.threads)
    started = time.perf_counter()
    dataset, model, config = build(args)
    total_steps = steps_per_epoch(dataset, config.training["batch_size"])
    report: dict = {
        "data": "synthetic (smoke)" if args.smoke else args.data,
        "preset": args.preset,
        "device": str(next(model.parameters()).device),
        "threads": torch.get_num_threads(),
        "steps_per_epoch": total_steps,
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    if not args.no_floor:
        floor = measure_floor(model, total_steps, args.repeats)
        report["floor_epoch_s"] = floor["floor_epoch_s"]
        report["floor_components_s"] = floor["components"]
    if args.ready:
        open(args.ready, "w").close()
    while args.go and not os.path.exists(args.go):
        time.sleep(0.05)
    timed = time_epoch(model, dataset, config, args.steps, args.epochs, args.warmup)
    step = timed.pop("step_fn")
    report.update(timed)
    if args.steps is not None and args.steps < total_steps:
        report["extrapolated_from_steps"] = timed["steps"]
    if "floor_epoch_s" in report:
        report["ratio"] = round(report["train_epoch_s"] / report["floor_epoch_s"], 3)
    if args.profile:
        batch_size = config.training["batch_size"]
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(0)
        batches = [
            tuple(
                torch.randint(0, n, (batch_size,), generator=generator).to(device)
                for n in (model.num_users, model.num_items, model.num_items)
            )
            for _ in range(math.ceil(args.profile))
        ]
        report["profile"] = profile(
            model, step, batches, report["train_epoch_s"], total_steps, args.top
        )
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
