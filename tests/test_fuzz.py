"""A fast, seeded subset of the CLI fuzzer (tests/fuzzing.py; the long run is
benchmarks/fuzz.py): every declared key of every model with every boundary value its domain
rejects, a few in-domain values that train, and a sample of mutated data files in each layout.
Every case must end in exit 0, or in exit 2 with one line and no Python exception type."""

from __future__ import annotations

import numpy as np
import pytest
from fuzzing import (
    Tally,
    config_cases,
    data_cases,
    run_in_process,
    run_subprocess,
    write_layouts,
)

from rearm.errors import ConfigError
from rearm.models.base import check_type


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("fuzz") / "layouts")


def _rejected(case) -> bool:
    """True if the key's declared domain rejects the value (so the run stops before training)."""
    try:
        check_type(case.value, case.annotation, case.label)
    except ConfigError:
        return True
    return False


def test_every_rejected_boundary_value_is_one_line(layouts, tmp_path):
    cases = list(config_cases(layouts["rearm"], tmp_path / "runs", np.random.default_rng(0), 0))
    rejected = [case for case in cases if _rejected(case)]
    assert len(rejected) > 200  # every key contributes several
    # a seeded sample that keeps every (model, key): at most 3 values each
    rng, by_key = np.random.default_rng(0), {}
    for case in rejected:
        by_key.setdefault((case.category, case.label.split("=")[0]), []).append(case)
    rejected = [group[i] for group in by_key.values() for i in rng.permutation(len(group))[:3]]
    tally = Tally()
    for case in rejected:
        tally.add(run_in_process(case))
    assert not tally.failures, [(f.case.label, f.problem, f.err[-300:]) for f in tally.failures]
    assert sum(tally.rejected.values()) == len(rejected)
    assert not any(path.exists() for path in (tmp_path / "runs").glob("*"))  # nothing written


def test_sampled_in_domain_values_train(layouts, tmp_path):
    rng = np.random.default_rng(1)
    cases = [
        case
        for case in config_cases(layouts["rearm"], tmp_path / "runs", rng, 1)
        if case.label.startswith("random") and "--model" in case.argv
        and case.argv[case.argv.index("--model") + 1] in ("mf", "lightgcn")
    ]  # fmt: skip
    tally = Tally()
    for index in rng.choice(len(cases), size=4, replace=False):
        tally.add(run_in_process(cases[index]))
    assert not tally.failures, [(f.case.label, f.problem, f.err[-300:]) for f in tally.failures]


def test_sampled_mutated_data_files_in_every_layout(layouts, tmp_path):
    rng = np.random.default_rng(2)
    cases = list(data_cases(layouts, tmp_path / "data", rng, train=False))
    pairs = [cases[i : i + 2] for i in range(0, len(cases), 2)]  # (info, cleanup)
    chosen = [pairs[i] for i in sorted(rng.choice(len(pairs), size=45, replace=False))]
    tally = Tally()
    for info, cleanup in chosen:
        tally.add(run_in_process(info))
        run_in_process(cleanup)
    assert not tally.failures, [(f.case.label, f.problem, f.err[-300:]) for f in tally.failures]
    assert {"data:rearm", "data:mmrec", "data:tabular"} <= set(tally.tried)


def test_real_subprocesses_fail_cleanly(layouts, tmp_path):
    rng = np.random.default_rng(3)
    data = [
        c for c in data_cases(layouts, tmp_path / "data", rng) if "train.npy huge-id" in c.label
    ]
    config = [
        c for c in config_cases(layouts["rearm"], tmp_path / "runs", rng, 0) if "rank=-1" in c.label
    ]
    for case in (data[1], config[0]):  # a 1-epoch training on a damaged file; a bad value
        outcome = run_subprocess(case, timeout=240)
        assert outcome.problem is None and outcome.code == 2, (outcome.problem, outcome.err)
