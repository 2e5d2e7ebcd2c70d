"""PNG plots of a study report (matplotlib, headless; `pip install 'rearm[plot]'`). They are drawn
from the report's own tables, so a plot and its table cannot disagree."""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from rearm.errors import ConfigError
from rearm.io import atomic_open


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "plots need matplotlib, which is not installed (pip install 'rearm[plot]')"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=90, bbox_inches="tight")
    return path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def plot_report(report: dict, out: str | os.PathLike) -> list[Path]:
    """Sensitivity curves (sweeps), bars (comparisons) and training curves, one set per table."""
    plt = _pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in report["tables"]:
        suffix = f"-{_slug(table['data'])}" if len(report["tables"]) > 1 else ""
        rows = [e for e in table["rows"] if e["seeds"]]
        if not rows:
            continue
        if report["kind"] == "sweep":
            written += _sensitivity(plt, report, table, rows, out, suffix)
        else:
            written.append(_bars(plt, report, table, rows, out / f"bars{suffix}.png"))
        written.append(_curves(plt, report, table, rows, out / f"training_curves{suffix}.png"))
    if report.get("fractions"):
        written.append(_fraction_curves(plt, report, out / "recall_vs_fraction.png"))
    return written


def _fraction_curves(plt, report, path: Path) -> Path:
    """Test Recall@20 against the corrupted fraction P, a line per row with a ±std band; rows
    whose difference from the reference is significant at a P (Holm over P) get a filled marker
    there, an open one otherwise."""
    view = report["fractions"]
    xs = view["fractions"]
    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    for curve in view["rows"]:
        means = [v["mean"] for v in curve["test"]["Recall@20"]]
        stds = [_zero(v["std"]) for v in curve["test"]["Recall@20"]]
        (drawn,) = axis.plot(xs, means, "-", lw=1.2, label=curve["label"])
        color = drawn.get_color()
        axis.fill_between(
            xs,
            [m - s for m, s in zip(means, stds)],
            [m + s for m, s in zip(means, stds)],
            color=color,
            alpha=0.15,
        )
        significant = [p < 0.05 for p in curve["tests"]["Recall@20"]["p_holm"]]
        for x, mean, filled in zip(xs, means, significant):
            axis.plot([x], [mean], "o", ms=4, mec=color, mfc=color if filled else "white")
    axis.set_xlabel(f"fraction P of items with {view['modality']} {view['mode']}d")
    axis.set_ylabel("test Recall@20")
    axis.set_title(
        f"{report['study']} ({view['source']}): filled = differs from {view['reference']} "
        "(Holm over P)",
        fontsize=8,
    )
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)
    return path


def _sensitivity(plt, report, table, rows, out, suffix) -> list[Path]:
    """One figure per axis group: valid and test Recall@20 against the axis value, ±std bands,
    a line per model; the chosen (valid-best) point circled. Non-numeric axes are drawn at
    positions 0..n-1 with the values as tick labels."""
    written = []
    groups = sorted({e["group"] for e in rows if e["group"] is not None})
    for group in groups:
        members = [e for e in rows if e["group"] == group]
        keys = list(members[0]["values"])
        key = keys[0] if len(keys) == 1 else ", ".join(keys)
        figure, axis = plt.subplots(figsize=(5.5, 3.4))
        for model in dict.fromkeys(e["model"] for e in members):
            line = [e for e in members if e["model"] == model]
            raw = [e["values"][keys[0]] if len(keys) == 1 else e["label"] for e in line]
            numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in raw)
            xs = raw if numeric else list(range(len(raw)))
            if not numeric:
                axis.set_xticks(xs, [str(v) for v in raw], rotation=30, ha="right")
            name = "" if len({e["model"] for e in members}) == 1 else f"{model} "
            for split, style in (("valid", "--"), ("test", "-")):
                means = [e[split]["Recall@20"]["mean"] for e in line]
                stds = [_zero(e[split]["Recall@20"]["std"]) for e in line]
                (drawn,) = axis.plot(xs, means, style, marker="o", ms=3, label=f"{name}{split}")
                axis.fill_between(
                    xs,
                    [m - s for m, s in zip(means, stds)],
                    [m + s for m, s in zip(means, stds)],
                    color=drawn.get_color(),
                    alpha=0.2,
                )
            for x, e in zip(xs, line):
                if e["chosen"]:
                    axis.plot(
                        [x],
                        [e["valid"]["Recall@20"]["mean"]],
                        "o",
                        mfc="none",
                        mec="black",
                        ms=10,
                        label="chosen (valid)",
                    )
        axis.set_xlabel(key)
        axis.set_ylabel("Recall@20")
        axis.set_title(f"{report['study']} ({table['data']}): Recall@20 vs {key}", fontsize=9)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
        written.append(_save(figure, out / f"sensitivity_{_slug(key)}{suffix}.png"))
        plt.close(figure)
    return written


def _bars(plt, report, table, rows, path: Path) -> Path:
    """Horizontal bars of valid and test Recall@20 per row with ±std error bars."""
    import numpy as np

    figure, axis = plt.subplots(figsize=(5.5, 0.35 * len(rows) + 1.2))
    positions = np.arange(len(rows))
    height = 0.38
    for offset, split in ((-height / 2, "valid"), (height / 2, "test")):
        axis.barh(
            positions + offset,
            [e[split]["Recall@20"]["mean"] for e in rows],
            height,
            xerr=[_zero(e[split]["Recall@20"]["std"]) for e in rows],
            label=split,
            capsize=2,
        )
    labels = [e["label"] + (" *" if e["significant"] else "") for e in rows]
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("Recall@20 (mean ± std over seeds; * significant vs reference)")
    axis.set_title(f"{report['study']} ({table['data']})", fontsize=9)
    axis.legend(fontsize=7)
    axis.grid(axis="x", alpha=0.3)
    _save(figure, path)
    plt.close(figure)
    return path


def _curves(plt, report, table, rows, path: Path) -> Path:
    """Valid Recall@20 per evaluated epoch, one line per row (mean over the seeds that evaluated
    the epoch)."""
    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    for entry in rows:
        curve = entry["curve"]
        axis.plot(curve["epochs"], curve["recall"], lw=1, label=entry["label"])
    axis.set_xlabel("epoch")
    axis.set_ylabel("valid Recall@20")
    axis.set_title(f"{report['study']} ({table['data']}): training curves", fontsize=9)
    if len(rows) <= 12:
        axis.legend(fontsize=6, ncol=2)
    axis.grid(alpha=0.3)
    _save(figure, path)
    plt.close(figure)
    return path


def _zero(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else value
