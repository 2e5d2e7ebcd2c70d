"""What the modality-pair terms of REARM cost as modalities are added.

    python benchmarks/modality_pairs.py [--data D] [--preset P] [--steps 20] [--counts 1,4] [--out F]

REARM's contrastive and orthogonality terms run over the M (M - 1) / 2 modality pairs, the rest
of a step grows about linearly in M. For M = 1 .. (the data set's modality count; its first M
tables), this builds REARM and times training steps (loss, backward, AdamW step) on random
batches, alternating a full step with one whose pairwise weights are zero (the terms are then
skipped), and prints one JSON object: per M the pair count, the median seconds of each kind of
step, and the pairwise terms' share of the full step. Default data: the `modalities` study's
synthetic world (2,000 users x 1,000 items, image / text / audio / noise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> int:
    from rearm.studies.templates import MODALITIES_DATA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=MODALITIES_DATA)
    parser.add_argument("--preset")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind per M")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--counts", help="modality counts to time, e.g. 1,4 (default: 1 .. all)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    import torch

    from rearm.experiments.config import resolve_config
    from rearm.experiments.run import load_run_data
    from rearm.models import get_model
    from rearm.training.trainer import seed_everything

    config = resolve_config(data=args.data, preset=args.preset, device="cpu")
    dataset = load_run_data(args.data)
    names = list(dataset.features)
    rows = []
    counts = range(1, len(names) + 1)
    if args.counts:
        counts = [int(c) for c in args.counts.split(",")]
        if any(not 1 <= c <= len(names) for c in counts):
            parser.error(f"--counts: each in 1..{len(names)}, got {args.counts}")
    for count in counts:
        chosen = dataset.select_modalities(names[:count])
        seed_everything(0)
        model = get_model("rearm").from_dataset(chosen, seed=0, **config.hyperparameters)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        weights = (model.contrastive_weight, model.orthogonal_weight)
        generator = torch.Generator().manual_seed(0)
        times: dict[str, list[float]] = {"full": [], "no_pairs": []}
        for step in range(2 * args.steps + 2):
            kind = "full" if step % 2 == 0 else "no_pairs"
            model.contrastive_weight, model.orthogonal_weight = (
                weights if kind == "full" else (0.0, 0.0)
            )
            users = torch.randint(chosen.num_users, (args.batch_size,), generator=generator)
            items = torch.randint(chosen.num_items, (2, args.batch_size), generator=generator)
            started = time.perf_counter()
            model.train()
            terms = model.loss(users, items[0], items[1])
            optimizer.zero_grad(set_to_none=True)
            sum(terms.values()).backward()
            optimizer.step()
            if step >= 2:  # the first step of each kind warms up
                times[kind].append(time.perf_counter() - started)
        full, plain = statistics.median(times["full"]), statistics.median(times["no_pairs"])
        rows.append(
            {
                "modalities": count,
                "names": names[:count],
                "pairs": count * (count - 1) // 2,
                "step_s": round(full, 4),
                "step_without_pair_terms_s": round(plain, 4),
                "pair_terms_s": round(full - plain, 4),
                "pair_terms_share": round((full - plain) / full, 4),
                "trainable_parameters": sum(
                    p.numel() for p in model.parameters() if p.requires_grad
                ),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "data": args.data,
        "preset": config.preset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        from rearm.io import atomic_open

        with atomic_open(args.out) as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
