"""The long fuzz run of the `rearm` CLI (the fast subset is tests/test_fuzz.py).

    python benchmarks/fuzz.py --seed 0 --randoms 3 [--only config|data] [--subprocess N]
        [--shuffle --report FILE]

Prints a progress line per case that fails and, at the end, one JSON object: cases tried, ended
in success and in a clean exit-2 error per category, and every failure (case, exit code, the
last lines of its output). Writes into a temporary folder (`--work DIR` to keep it). Cases come
from the declarations (see tests/fuzzing.py), so new keys and models are covered automatically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
from fuzzing import (  # noqa: E402
    Tally,
    config_cases,
    data_cases,
    run_in_process,
    run_subprocess,
    write_layouts,
)

from rearm.io import write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--randoms", type=int, default=3, help="random in-domain values per key")
    parser.add_argument("--only", choices=["config", "data"])
    parser.add_argument(
        "--subprocess",
        type=int,
        default=0,
        help="also run every N-th case as a real subprocess (0: none)",
    )
    parser.add_argument("--work", help="folder for data copies and runs (default: a temp dir)")
    parser.add_argument(
        "--shuffle",
        action="store_true",
        help="run the cases in a seeded random order (a stopped run is a sample)",
    )
    parser.add_argument("--report", help="rewrite this JSON summary after every case")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="rearm-fuzz-"))
    os.environ.setdefault("REARM_CACHE_DIR", str(work / "cache"))
    rng = np.random.default_rng(args.seed)
    layouts = write_layouts(work / "layouts")
    cases = []
    if args.only in (None, "config"):
        cases += list(config_cases(layouts["rearm"], work / "runs", rng, args.randoms))
    if args.only in (None, "data"):
        cases += list(data_cases(layouts, work / "data", rng))
    if args.shuffle:
        cases = [cases[i] for i in rng.permutation(len(cases))]
    tally = Tally()
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        real = args.subprocess and index % args.subprocess == 0
        outcome = run_subprocess(case) if real else run_in_process(case)
        tally.add(outcome)
        if args.report:
            write_json(args.report, summary(args.seed, tally, started, len(cases)))
        if outcome.problem:
            print(
                f"[{index}/{len(cases)}] FAIL {case.category} {case.label}: {outcome.problem}\n"
                + "\n".join((outcome.out + outcome.err).strip().splitlines()[-6:]),
                file=sys.stderr,
                flush=True,
            )
        elif index % 50 == 0:
            print(
                f"[{index}/{len(cases)}] {time.perf_counter() - started:.0f}s, "
                f"{len(tally.failures)} failures",
                file=sys.stderr,
                flush=True,
            )
    print(json.dumps(summary(args.seed, tally, started, len(cases)), indent=1))
    return 1 if tally.failures else 0


def summary(seed: int, tally: Tally, started: float, planned: int) -> dict:
    return {
        "seed": seed,
        "planned": planned,
        "cases": sum(tally.tried.values()),
        "tried": tally.tried,
        "succeeded": tally.ok,
        "rejected_exit_2": tally.rejected,
        "failures": [
            {
                "category": f.case.category,
                "case": f.case.label,
                "code": f.code,
                "problem": f.problem,
                "output": (f.out + f.err).strip().splitlines()[-3:],
            }
            for f in tally.failures
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
