"""The floor of a faithful REARM training epoch on this machine: the work no implementation of
the published model can skip, timed piece by piece. Prints one JSON object.

    python benchmarks/floor.py [--data data/baby --preset baby] [--device cpu|cuda] [--repeats 5]
    python benchmarks/floor.py --smoke          # tiny synthetic data, seconds

Per training step (a batch of `batch_size` triples; ceil(train interactions / batch_size) steps
an epoch), for every trainable feature table X [n, D] with its projection W [d, D]:
  table_forward       X W^T + b                      (2 n D d flops)
  projection_gradient G^T X for W's gradient         (2 n D d)
  table_gradient      G W for X's gradient            (2 n D d)
plus
  graph_products      every sparse product of the forward pass (homograph layers of each side,
                      bipartite LightGCN layers over [(U+I), (M+1) d]) and its transpose in the
                      backward pass
  adamw               one fused AdamW step over every trainable parameter (121M on Baby)
Each component is the median over `repeats` timed steps (after one warm-up), times the steps of
an epoch; `floor_epoch_s` is their sum. Everything else a step does (attention, meta-network,
losses, elementwise passes) is not in the floor.
"""

# ruff: noqa: I001  (rearm is imported before torch on purpose)

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import rearm  # noqa: F401  (before torch allocates: rearm/__init__.py sets its allocator)
import torch


def _timer(device: torch.device) -> Callable[[], float]:
    def now() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return now


def _median_seconds(work: Callable[[], object], repeats: int, device: torch.device) -> float:
    now = _timer(device)
    work()  # warm-up: kernels, allocator, first touch of buffers
    times = []
    for _ in range(repeats):
        start = now()
        work()
        times.append(now() - start)
    return statistics.median(times)


def measure_floor(model, steps_per_epoch: int, repeats: int = 5) -> dict:
    """Time the floor components for a built REARM `model` (on its device); see the module
    docstring. Returns {"components": {name: seconds per epoch}, "per_step_s": {...},
    "floor_epoch_s": sum, "steps_per_epoch": ...}."""
    device = next(model.parameters()).device
    per_step: dict[str, float] = {}
    tables = [
        (table, projection)
        for tables, projections in (
            (model.item_tables, model.item_projections),
            (model.user_tables, model.user_projections),
        )
        for table, projection in zip(tables, projections)
        if table.requires_grad
    ]
    with torch.no_grad():
        weights = [p.weight.detach() for _, p in tables]
        biases = [p.bias.detach() for _, p in tables]
        table_values = [t.detach() for t, _ in tables]
        grads = [
            torch.randn(t.shape[0], w.shape[0], device=device)
            for t, w in zip(table_values, weights)
        ]
        buffers = [torch.empty_like(t) for t in table_values]
        per_step["table_forward"] = _median_seconds(
            lambda: [torch.addmm(b, x, w.t()) for x, w, b in zip(table_values, weights, biases)],
            repeats,
            device,
        )
        per_step["projection_gradient"] = _median_seconds(
            lambda: [g.t() @ x for g, x in zip(grads, table_values)], repeats, device
        )
        per_step["table_gradient"] = _median_seconds(
            lambda: [torch.mm(g, w, out=out) for g, w, out in zip(grads, weights, buffers)],
            repeats,
            device,
        )

        from rearm.models.kernels import csr_dense_mm  # the model's own graph product

        width = (len(model.modalities) + 1) * model.dim
        products = []
        for graph, transpose, layers in (
            (model.item_homograph, model.item_homograph_transpose, model.item_homograph_layers),
            (model.user_homograph, model.user_homograph_transpose, model.user_homograph_layers),
            (model.bipartite, model.bipartite_transpose, model.num_layers),
        ):
            if graph is None or layers == 0:
                continue
            x = torch.randn(graph.shape[1], width, device=device)
            products += [(graph, x), (transpose, x)] * layers
        per_step["graph_products"] = _median_seconds(
            lambda: [csr_dense_mm(graph, x) for graph, x in products], repeats, device
        )

    # AdamW over copies of the trainable parameters, with gradients of the same shapes
    from rearm.training.trainer import make_optimizer

    copies = [torch.nn.Parameter(p.detach().clone()) for p in model.parameters() if p.requires_grad]
    for p in copies:
        p.grad = torch.randn_like(p) * 1e-3
    optimizer = make_optimizer(copies, learning_rate=5e-5, weight_decay=5e-4)
    per_step["adamw"] = _median_seconds(optimizer.step, repeats, device)
    trainable = sum(p.numel() for p in copies)
    del optimizer, copies

    components = {name: seconds * steps_per_epoch for name, seconds in per_step.items()}
    return {
        "device": str(device),
        "steps_per_epoch": steps_per_epoch,
        "trainable_parameters": trainable,
        "per_step_s": {name: round(value, 5) for name, value in per_step.items()},
        "components": {name: round(value, 3) for name, value in components.items()},
        "floor_epoch_s": round(sum(components.values()), 3),
    }


def build(args: argparse.Namespace):
    """(dataset, model on the device, resolved config) as `rearm train` would build them."""
    from rearm.data.cache import GraphCache
    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import load_run_data
    from rearm.models import get_model
    from rearm.training.trainer import resolve_device, seed_everything

    if args.smoke:
        from rearm.data.synth import make_synthetic

        dataset = make_synthetic(
            num_users=300, num_items=200, modalities={"image": 256, "text": 32}, seed=1
        )
        config = resolve_config(preset=args.preset, overrides=args.set)
    else:
        config = resolve_config(data=args.data, preset=args.preset, overrides=args.set)
        dataset = load_run_data(config.data)
    seed_everything(config.seed)
    device = resolve_device(args.device)
    model = (
        get_model("rearm")
        .from_dataset(dataset, graph_cache=GraphCache(), seed=config.seed, **config.hyperparameters)
        .to(device)
    )
    return dataset, model, config


def steps_per_epoch(dataset, batch_size: int) -> int:
    return max(1, math.ceil(dataset.train.nnz / batch_size))


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, else a one-line usage error (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def run(main: Callable[[], int]) -> int:
    """main(), with rearm's own errors (a missing data set, a bad --set) as one line and exit
    code 2 instead of a traceback."""
    from rearm.errors import RearmError

    try:
        return main()
    except RearmError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/baby", help="data set (default data/baby)")
    parser.add_argument("--preset", default="baby", help="REARM preset (default baby)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=at_least(1), help="CPU threads (default: all cores)")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed steps per component")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data (a test)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        from rearm.training.threads import set_threads

        set_threads(args.threads)
    dataset, model, config = build(args)
    steps = steps_per_epoch(dataset, config.training["batch_size"])
    report = measure_floor(model, steps, args.repeats)
    report.update(
        data="synthetic (smoke)" if args.smoke else args.data,
        preset=args.preset,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
