"""A seeded fuzzer of the `rearm` CLI, shared by tests/test_fuzz.py (a fast subset) and
benchmarks/fuzz.py (the long run).

Cases come from the declarations, so a new key or model is covered without touching this file:
  * config cases: for every key of every model (`rearm.experiments.config.config_keys`),
    boundary values of its declared domain (the bounds, just outside them, NaN, +-inf, a huge
    number, the wrong type, every allowed choice and a wrong one) and random values inside it,
    each run as `rearm train --model M --data TINY --set KEY=VALUE --epochs 1`;
  * data cases: every file of a tiny data set in each layout (REARM, MMRec, tabular) mutated
    (truncated, random bytes, wrong dtype, wrong shape, NaN, huge ids, empty, unreadable),
    each run as `rearm data info` and `rearm train --model mf --epochs 1`.
A case passes when it ends in exit 0, or in exit 2 with exactly one line on stderr
(`rearm: error: ...`), and no output names a Python exception type or holds a traceback.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b|Traceback")


@dataclass
class Case:
    category: str  # "config:<model>" or "data:<layout>"
    label: str
    argv: list[str]
    setup: typing.Callable[[], None] | None = None
    teardown: typing.Callable[[], None] | None = None
    annotation: typing.Any = None  # config cases: the key's declaration and the value tried
    value: typing.Any = None


@dataclass
class Outcome:
    case: Case
    code: int | None
    out: str
    err: str
    problem: str | None = None


@dataclass
class Tally:
    tried: dict[str, int] = field(default_factory=dict)
    ok: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    failures: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        category = outcome.case.category
        self.tried[category] = self.tried.get(category, 0) + 1
        if outcome.problem:
            self.failures.append(outcome)
        elif outcome.code == 0:
            self.ok[category] = self.ok.get(category, 0) + 1
        else:
            self.rejected[category] = self.rejected.get(category, 0) + 1


# ----------------------------------------------------------------------------------------------
# values from declarations


def boundary_values(annotation) -> list:
    """Values at and around the edges of a declared domain, plus wrong types."""
    from rearm.models.base import domain_of

    base, domains = domain_of(annotation)
    origin = typing.get_origin(base)
    values: list = ["not-a-value", [1, 2], None]
    if origin is typing.Literal:
        return [*typing.get_args(base), "bogus", 1, None]
    if origin in (typing.Union, __import__("types").UnionType):
        out = []
        for arg in typing.get_args(base):
            out += boundary_values(arg)
        return _unique(out)
    if base is bool:
        return [True, False, 1, "maybe", None]
    if base is str:
        return ["", "x", 3, None]
    if origin is dict or base is dict:
        return [
            {},
            {"image": 1.0},
            {"image": 0.5, "text": 0.5},
            {"image": 2.0, "text": -1.0},
            {"audio": 1.0},
            {"image": 0.3, "text": 0.3},
            "x",
            None,
        ]
    if base in (int, float):
        values += [0, -1, 1, float("nan"), float("inf"), float("-inf"), 2**62, -(2**62), 1e300]
        for domain in domains:
            for bound in (domain.ge, domain.gt, domain.le, domain.lt):
                if bound is not None:
                    values += [bound, bound - 1, bound + 1, bound - 1e-9, bound + 1e-9]
        if base is int:
            values = [
                v for v in values if not isinstance(v, float) or not math.isfinite(v) or v == int(v)
            ] + [1.5]
    return _unique(values)


def random_value(annotation, rng: np.random.Generator):
    """A random value inside the declared domain (sizes kept small enough to train quickly)."""
    from rearm.models.base import domain_of

    base, domains = domain_of(annotation)
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        return rng.choice(list(typing.get_args(base))).item()
    if origin in (typing.Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(base) if a is not type(None)]
        return random_value(args[0], rng) if args and rng.random() < 0.7 else None
    if base is bool:
        return bool(rng.integers(2))
    if origin is dict or base is dict:
        weight = float(rng.random())
        return {"image": weight, "text": 1.0 - weight}
    if base in (int, float):
        low, high = -8.0, 8.0
        for domain in domains:
            low = max(low, domain.ge if domain.ge is not None else domain.gt or low)
            high = min(high, domain.le if domain.le is not None else domain.lt or high)
        if base is int:
            return int(rng.integers(math.ceil(low), math.floor(high) + 1))
        value = float(rng.uniform(low, high))
        for domain in domains:
            if not domain.contains(value):
                value = float(low if domain.contains(low) else high)
        return value
    return None


def _unique(values: list) -> list:
    out, seen = [], set()
    for value in values:
        key = repr(value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _set(key: str, value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"{key}={text.removesuffix('...').strip()}"


def config_cases(data: Path, runs: Path, rng: np.random.Generator, randoms: int = 2):
    """Cases for every key of every model in MODEL_NAMES."""
    from rearm.experiments.config import TOP_LEVEL_TYPES, TRAINING_TYPES
    from rearm.models import MODEL_NAMES, get_model

    counter = iter(range(10**9))
    for model in MODEL_NAMES:
        annotations = {
            **{k: a for k, a in TOP_LEVEL_TYPES.items() if k not in ("model", "data", "device")},
            **{k: a for k, a in TRAINING_TYPES.items() if k != "epochs"},
            **{k: a for k, (a, _) in get_model(model).hyperparameters().items()},
        }
        for key, annotation in annotations.items():
            values = [(v, "boundary") for v in boundary_values(annotation)]
            values += [(random_value(annotation, rng), "random") for _ in range(randoms)]
            for value, kind in values:
                out = runs / f"c{next(counter)}"
                yield Case(
                    f"config:{model}",
                    f"{kind} {key}={value!r}",
                    [
                        "train",
                        "--model",
                        model,
                        "--data",
                        str(data),
                        "--epochs",
                        "1",
                        "--quiet",
                        "--set",
                        "batch_size=64",
                        "--set",
                        _set(key, value),
                        "--out",
                        str(out),
                    ],
                    annotation=annotation,
                    value=value,
                )


# ----------------------------------------------------------------------------------------------
# data sets and their mutations


def tiny_dataset():
    from rearm.data.synth import make_synthetic

    return make_synthetic(
        num_users=24,
        num_items=16,
        modalities={"image": 6, "text": 4},
        seed=5,
        interactions_per_user=5,
    )


def write_layouts(root: Path) -> dict[str, Path]:
    """The same tiny data set in the REARM, MMRec and tabular layouts."""
    from rearm.data.synth import write_rearm_layout

    dataset = tiny_dataset()
    rearm_dir = root / "rearm"
    write_rearm_layout(dataset, rearm_dir)
    splits = {s: np.load(rearm_dir / f"{s}.npy") for s in ("train", "valid", "test")}
    mmrec = root / "mmrec"
    mmrec.mkdir(parents=True)
    lines = ["userID\titemID\tx_label"]
    for label, name in enumerate(("train", "valid", "test")):
        lines += [f"{u}\t{i}\t{label}" for u, i in splits[name].T]
    (mmrec / "tiny.inter").write_text("\n".join(lines) + "\n")
    tabular = root / "tabular"
    tabular.mkdir(parents=True)
    rows = ["user,item,split"]
    for name in ("train", "valid", "test"):
        rows += [f"u{u},i{i},{name}" for u, i in splits[name].T]
    (tabular / "interactions.csv").write_text("\n".join(rows) + "\n")
    (tabular / "items.txt").write_text("".join(f"i{i}\n" for i in range(dataset.num_items)))
    for folder in (mmrec, tabular):
        for name, features in dataset.features.items():
            np.save(folder / f"{name}_feat.npy", features)
    return {"rearm": rearm_dir, "mmrec": mmrec, "tabular": tabular}


def _mutations(path: Path, rng: np.random.Generator) -> Iterator[tuple[str, typing.Callable]]:
    """(name, mutate(target)) pairs that apply to this file; `target` is a copy of it."""
    raw = path.read_bytes()

    def writer(content: bytes):
        return lambda target: target.write_bytes(content)

    yield "truncated", writer(raw[: max(1, len(raw) // 2)])
    yield "truncated-header", writer(raw[:7])
    noisy = bytearray(raw)
    for position in rng.integers(0, len(raw), size=max(1, len(raw) // 50)):
        noisy[position] = int(rng.integers(256))
    yield "random-bytes", writer(bytes(noisy))
    yield "all-random", writer(rng.integers(0, 256, len(raw), dtype=np.uint8).tobytes())
    yield "empty", writer(b"")
    yield "unreadable", lambda target: os.chmod(target, 0)
    if path.suffix == ".npy":
        array = np.load(path)

        def save(value):
            def mutate(target):
                with open(target, "wb") as handle:
                    np.save(handle, value)

            return mutate

        yield "dtype-float", save(array.astype(np.float64) + 0.5)
        yield "dtype-str", save(array.astype(str))
        yield "dtype-bool", save(array.astype(bool))
        yield "dtype-complex", save(array.astype(np.complex64))
        yield "shape-transposed", save(array.T.copy())
        yield "shape-1d", save(array.reshape(-1))
        yield "shape-3d", save(array.reshape(1, *array.shape))
        yield "shape-empty", save(array[:, :0] if array.ndim == 2 else array[:0])
        yield "object", save(np.array([None, 1], dtype=object))
        if np.issubdtype(array.dtype, np.floating):
            nan = array.copy()
            nan.flat[int(rng.integers(nan.size))] = np.nan
            yield "nan", save(nan)
            inf = array.copy()
            inf.flat[0] = np.inf
            yield "inf", save(inf)
            with np.errstate(over="ignore"):
                huge_values = array * np.float32(3e38)
            yield "huge-values", save(huge_values)
        else:
            huge = array.copy()
            huge.flat[int(rng.integers(huge.size))] = 2**62
            yield "huge-id", save(huge)
            negative = array.copy()
            negative.flat[0] = -1
            yield "negative-id", save(negative)
            yield "as-float-nan", save(np.where(array == array.flat[0], np.nan, array))
    else:
        text = raw.decode(errors="replace")
        lines = text.splitlines()
        if len(lines) > 2:
            first = lines[1]
            separator = "\t" if "\t" in first else ","
            cells = first.split(separator)
            for name, replacement in (
                ("huge-id", str(2**62)),
                ("nan", "nan"),
                ("negative-id", "-1"),
                ("float-id", "1.5"),
                ("empty-cell", ""),
            ):
                mutated = list(lines)
                mutated[1] = separator.join([replacement] + cells[1:])
                yield name, writer(("\n".join(mutated) + "\n").encode())
            yield "header-only", writer((lines[0] + "\n").encode())
            yield "wrong-separator", writer(text.replace(separator, ";").encode())
            yield (
                "extra-column",
                writer("\n".join(line + separator + "x" for line in lines).encode()),
            )
            yield "binary", writer(np.arange(64, dtype=np.int64).tobytes())


def data_cases(
    layouts: dict[str, Path], work: Path, rng: np.random.Generator, train: bool = True
) -> Iterator[Case]:
    """Mutate each file of each layout in a fresh copy; `rearm data info` (and a 1-epoch MF
    `rearm train` when `train`) on it."""
    counter = iter(range(10**9))
    for layout, source in layouts.items():
        for file in sorted(source.iterdir()):
            for name, mutate in _mutations(file, rng):
                index = next(counter)
                copy = work / f"d{index}"

                def setup(copy=copy, source=source, file=file, mutate=mutate):
                    shutil.copytree(source, copy)
                    mutate(copy / file.name)

                def teardown(copy=copy):
                    _restore_permissions(copy)

                label = f"{layout}/{file.name} {name}"
                yield Case(
                    f"data:{layout}", f"info {label}", ["data", "info", str(copy)], setup, None
                )
                if train:
                    yield Case(
                        f"data:{layout}",
                        f"train {label}",
                        [
                            "train",
                            "--model",
                            "mf",
                            "--data",
                            str(copy),
                            "--epochs",
                            "1",
                            "--quiet",
                            "--set",
                            "batch_size=64",
                            "--out",
                            str(work / f"r{index}"),
                        ],
                        None,
                        teardown,
                    )
                else:
                    yield Case(
                        f"data:{layout}", f"(cleanup) {label}", ["--version"], None, teardown
                    )


def _restore_permissions(folder: Path) -> None:
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            os.chmod(path, 0o644 if path.is_file() else 0o755)


# ----------------------------------------------------------------------------------------------
# running


def judge(case: Case, code, out: str, err: str) -> Outcome:
    problem = None
    if EXCEPTION_NAME.search(out + err):
        problem = "a Python exception type or traceback in the output"
    elif code not in (0, 2):
        problem = f"exit code {code}"
    elif code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("rearm: error: "):
            problem = f"exit 2 with {len(lines)} lines on stderr"
    return Outcome(case, code, out, err, problem)


def run_in_process(case: Case) -> Outcome:
    """Run one case through rearm.cli.main in this process (stdout / stderr captured)."""
    import traceback

    from rearm.cli import main

    if case.setup:
        case.setup()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(case.argv)
            except SystemExit as exit_:
                code = exit_.code
    except Exception:  # noqa: BLE001  (an escaped exception is the finding)
        code = None
        err.write(traceback.format_exc())
    finally:
        if case.teardown:
            case.teardown()
    return judge(case, code, out.getvalue(), err.getvalue())


def run_subprocess(case: Case, timeout: float = 300) -> Outcome:
    import subprocess
    import sys

    if case.setup:
        case.setup()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "rearm.cli", *case.argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        if case.teardown:
            case.teardown()
    return judge(case, done.returncode, done.stdout, done.stderr)
