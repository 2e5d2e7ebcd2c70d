"""REARM throughput on one GPU, in one command (about 4-5 minutes on an H100/H200 with Baby):

    OUT=out python benchmarks/gpu_throughput.py [--data data/baby]
    python benchmarks/gpu_throughput.py --smoke      # tiny synthetic data on the CPU (a test)

Writes $OUT/gpu_throughput.json (default: a new temporary folder) and prints a summary:
  floor          benchmarks/floor.py's components on this device;
  epoch          a faithful Baby epoch (baby preset), eager steps vs the captured CUDA graph
                 (`cuda_graph` true / false), and the ratio of each to the floor;
  concurrency    1, 2, 4 and 8 processes training Baby side by side on the device: each times
                 --concurrency-steps steps (after warm-up) from a common start; aggregate
                 epochs per second = sum over processes of 1 / (its epoch seconds, scaled from
                 those steps);
  precision      fp32 vs bf16 autocast: seconds per epoch and valid / test Recall@20 after a
                 fixed budget of --budget-epochs epochs (model selected on valid Recall@20).
A phase that would not fit in --time-budget seconds is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from floor import build, measure_floor, steps_per_epoch  # noqa: E402
from training import time_epoch  # noqa: E402


def _with_training(config, **changes):
    from dataclasses import replace

    return replace(config, training={**config.training, **changes})


def epoch_phase(args, dataset, model, config) -> dict:
    out = {}
    for name, graph in (("eager", False), ("cuda_graph", True)):
        timed = time_epoch(
            model, dataset, _with_training(config, cuda_graph=graph), args.steps, epochs=2
        )
        timed.pop("step_fn")
        out[name] = timed
    return out


def concurrency_phase(args, counts: list[int], workdir: Path) -> dict:
    results = {}
    for count in counts:
        folder = workdir / f"concurrent_{count}"
        folder.mkdir(parents=True, exist_ok=True)
        go = folder / "go"
        command = [
            sys.executable,
            str(HERE / "training.py"),
            "--no-floor",
            "--device",
            args.device,
            "--preset",
            args.preset,
            "--steps",
            str(args.concurrency_steps),
            "--epochs",
            "1",
            "--go",
            str(go),
        ]
        command += ["--smoke"] if args.smoke else ["--data", args.data]
        # the cores are shared too: each run gets its part unless told otherwise
        threads = args.threads_per_run or max(1, (os.cpu_count() or 1) // count)
        command += ["--threads", str(threads)]
        processes = []
        for k in range(count):
            ready = folder / f"ready_{k}"
            processes.append(
                subprocess.Popen(
                    command + ["--ready", str(ready)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        while not all((folder / f"ready_{k}").exists() for k in range(count)):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.1)
        start = time.perf_counter()
        go.touch()
        epochs = []
        for process in processes:
            stdout, _ = process.communicate()
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            if process.returncode == 0 and lines:
                epochs.append(json.loads(lines[-1])["train_epoch_s"])
        wall = time.perf_counter() - start
        results[str(count)] = {
            "processes": count,
            "finished": len(epochs),
            "epoch_s_per_run": epochs,
            "aggregate_epochs_per_s": round(sum(1.0 / e for e in epochs), 4) if epochs else None,
            "wall_s": round(wall, 1),
        }
        print(f"  {count} concurrent: {results[str(count)]}", flush=True)
    return results


def precision_phase(args, dataset, config) -> dict:
    from rearm.data.cache import GraphCache
    from rearm.evaluation.protocol import get_protocol
    from rearm.models import get_model
    from rearm.training.trainer import (
        Progress,
        evaluate_split,
        fit,
        resolve_device,
        seed_everything,
    )

    out = {}
    protocol = get_protocol(config.protocol)
    for precision in ("fp32", "bf16"):
        seed_everything(config.seed)
        model = (
            get_model("rearm")
            .from_dataset(
                dataset, graph_cache=GraphCache(), seed=config.seed, **config.hyperparameters
            )
            .to(resolve_device(args.device))
        )
        training = config.training
        result = fit(
            model,
            dataset,
            protocol,
            epochs=args.budget_epochs,
            patience=args.budget_epochs,
            batch_size=training["batch_size"],
            learning_rate=training["learning_rate"],
            weight_decay=training["weight_decay"],
            seed=config.seed,
            precision=precision,
            progress=Progress(enabled=False),
        )
        test = evaluate_split(model, dataset, protocol, "test")
        times = [r.train_s for r in result.history]
        out[precision] = {
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "train_epoch_s_median": round(statistics.median(times[1:] or times), 3),
            "valid_recall@20": round(result.best_valid["Recall@20"], 4),
            "test_recall@20": round(test["Recall@20"], 4),
            "cuda_graph": result.cuda_graph,
        }
        print(f"  {precision}: {out[precision]}", flush=True)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if out["bf16"]["train_epoch_s_median"] > 0:
        out["bf16_speedup"] = round(
            out["fp32"]["train_epoch_s_median"] / out["bf16"]["train_epoch_s_median"], 3
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/baby")
    parser.add_argument("--preset", default="baby")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder (default $OUT)")
    parser.add_argument("--steps", type=int, help="steps timed per epoch (default: all)")
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--concurrency-steps", type=int, default=20)
    parser.add_argument(
        "--threads-per-run",
        type=int,
        help="CPU threads of each concurrent run (default cores / runs)",
    )
    parser.add_argument("--budget-epochs", type=int, default=8)
    parser.add_argument("--time-budget", type=float, default=280.0, help="seconds for all phases")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic data on the CPU")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.concurrency = "1,2"
        args.concurrency_steps = 2
        args.budget_epochs = 2
    args.smoke_repeats = 1 if args.smoke else 5
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_throughput_"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "data": "synthetic (smoke)" if args.smoke else args.data,
        "preset": args.preset,
        "torch": torch.__version__,
        "skipped": [],
    }

    def remaining() -> float:
        return args.time_budget - (time.perf_counter() - started)

    def save() -> None:
        report["wall_s"] = round(time.perf_counter() - started, 1)
        path = out / "gpu_throughput.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(temporary, path)

    build_args = argparse.Namespace(
        smoke=args.smoke, data=args.data, preset=args.preset, set=args.set, device=args.device
    )
    print("building the model", flush=True)
    dataset, model, config = build(build_args)
    steps = steps_per_epoch(dataset, config.training["batch_size"])
    print("floor", flush=True)
    report["floor"] = measure_floor(model, steps, args.smoke_repeats)
    save()
    print(f"  floor_epoch_s {report['floor']['floor_epoch_s']}", flush=True)
    print("faithful epoch: eager vs CUDA graph", flush=True)
    report["epoch"] = epoch_phase(args, dataset, model, config)
    for name in ("eager", "cuda_graph"):
        seconds = report["epoch"][name]["train_epoch_s"]
        report["epoch"][name]["ratio_to_floor"] = round(
            seconds / report["floor"]["floor_epoch_s"], 3
        )
        print(f"  {name}: {seconds} s per epoch", flush=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    save()

    counts = [int(c) for c in args.concurrency.split(",") if c]
    if remaining() > 40 * len(counts) or args.smoke:
        print("concurrent runs", flush=True)
        report["concurrency"] = concurrency_phase(args, counts, out)
    else:
        report["skipped"].append("concurrency (time budget)")
    save()
    if remaining() > 60 or args.smoke:
        print(f"precision: fp32 vs bf16, {args.budget_epochs} epochs each", flush=True)
        report["precision"] = precision_phase(args, dataset, config)
    else:
        report["skipped"].append("precision (time budget)")
    save()

    floor = report["floor"]["floor_epoch_s"]
    epoch = report["epoch"]
    lines = [
        f"device {report['device_name']}, data {report['data']}, wall {report['wall_s']} s",
        f"floor {floor} s/epoch {report['floor']['components']}",
        f"epoch eager {epoch['eager']['train_epoch_s']} s ({epoch['eager']['ratio_to_floor']}x floor)"
        f", CUDA graph {epoch['cuda_graph']['train_epoch_s']} s"
        f" ({epoch['cuda_graph']['ratio_to_floor']}x floor, captured: "
        f"{epoch['cuda_graph']['cuda_graph']})",
    ]
    for count, row in report.get("concurrency", {}).items():
        lines.append(f"{count} concurrent: {row['aggregate_epochs_per_s']} epochs/s aggregate")
    if "precision" in report:
        p = report["precision"]
        lines.append(
            f"fp32 {p['fp32']['train_epoch_s_median']} s/epoch test R@20 "
            f"{p['fp32']['test_recall@20']}; bf16 {p['bf16']['train_epoch_s_median']} s/epoch "
            f"test R@20 {p['bf16']['test_recall@20']} (speed-up {p.get('bf16_speedup')})"
        )
    if report["skipped"]:
        lines.append(f"skipped: {', '.join(report['skipped'])}")
    print("\n".join(lines))
    print(f"-> {out / 'gpu_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
