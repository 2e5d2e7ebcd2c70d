"""Study reports: pure functions of the saved run folders (a report never trains).

One table per data set of the study. Per row (a configuration over its seeds): mean ± std of
valid and test Recall@10/20 and NDCG@10/20, the relative change of the test means against the
reference row, and a paired test against it: each user's test Recall@20 (and NDCG@20) averaged
over the row's seeds, Wilcoxon signed-rank across the users both rows evaluate, p-values
Holm-corrected over the rows of the table; and the cost of the row: median seconds per training
epoch, peak resident memory (MB) and trainable parameters, each the mean over its runs. In a sweep, the row with the best mean **valid**
Recall@20 (per model and axis group) is marked as chosen and its test numbers are the result;
test numbers never choose anything.

A study with a `corruption` entry (one derived data set per fraction P) also gets `fractions`:
each row's test Recall@20 / NDCG@20 against P, its Wilcoxon test against the reference at each P
(the per-table raw p, Holm-corrected over the P values of that row), and the degradation test:
Wilcoxon over users of (row's drop from the first to the last P) - (reference's drop), each
user's values averaged over seeds. A positive mean difference means the row degrades more.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from rearm.arrays import sorted_intersect
from rearm.errors import RunError
from rearm.io import atomic_open, write_json
from rearm.studies.engine import STUDY_FILE, cell_complete, read_study_record
from rearm.studies.spec import names_a_row
from rearm.studies.stats import holm, mean_std, relative_change, wilcoxon_signed_rank

METRICS = ("Recall@10", "Recall@20", "NDCG@10", "NDCG@20")
TESTED = ("Recall@20", "NDCG@20")
SELECTION = ("valid", "Recall@20")
ALPHA = 0.05
SHORT = {"Recall@10": "R@10", "Recall@20": "R@20", "NDCG@10": "N@10", "NDCG@20": "N@20"}
# cost columns: name -> where results.json keeps it
COST = {
    "epoch_s": ("timing", "train_epoch_s"),
    "peak_rss_mb": ("peak_rss_mb",),
    "trainable_parameters": ("trainable_parameters",),
}
COST_HEADERS = {
    "epoch_s": "s/epoch",
    "peak_rss_mb": "peak RSS MB",
    "trainable_parameters": "params",
}


def load_study(study_dir: str | os.PathLike) -> dict:
    path = Path(study_dir) / STUDY_FILE
    try:
        return read_study_record(path)
    except FileNotFoundError:
        raise RunError(f"{path}: not found (is {study_dir} a study directory?)") from None


def _row_runs(study_dir: Path, study: dict, row: int) -> list[Path]:
    """The complete run folders of a row (one per seed), in seed order."""
    runs = []
    for cell in sorted((c for c in study["cells"] if c["row"] == row), key=lambda c: c["seed"]):
        run_dir = study_dir / cell["dir"]
        if cell_complete(run_dir, cell["key"]):
            runs.append(run_dir)
    return runs


def _per_user_mean(runs: list[Path], split: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, metric averaged over the runs) for the users every run evaluated."""
    tables = []
    for run in runs:
        with np.load(run / "per_user.npz") as data:
            tables.append((data[f"{split}_users"], data[f"{split}_{metric}"]))
    users = tables[0][0]
    for other, _ in tables[1:]:
        users = sorted_intersect(users, other)
    values = [vals[np.searchsorted(u, users)] for u, vals in tables]
    return users, np.mean(values, axis=0)


def paired_test(
    runs: list[Path], reference_runs: list[Path], metric: str, split: str = "test"
) -> tuple[float, float]:
    """(statistic, p) of the Wilcoxon signed-rank test between two rows' per-user `metric`,
    each averaged over its seeds, on the users both evaluate."""
    users, values = _per_user_mean(runs, split, metric)
    ref_users, ref_values = _per_user_mean(reference_runs, split, metric)
    common = sorted_intersect(users, ref_users)
    return wilcoxon_signed_rank(
        values[np.searchsorted(users, common)], ref_values[np.searchsorted(ref_users, common)]
    )


def _training_curve(runs: list[Path]) -> dict[str, list]:
    """{"epochs", "recall"}: mean valid Recall@20 at each evaluated epoch, over the runs that
    evaluated it (with eval_every > 1 the epochs between evaluations have no valid metrics)."""
    by_epoch: dict[int, list[float]] = {}
    for run in runs:
        try:
            lines = (run / "metrics.jsonl").read_text().splitlines()
        except OSError:
            continue
        for text in lines:
            if not text.strip():
                continue
            record = json.loads(text)
            value = (record.get("valid") or {}).get("Recall@20")
            if value is not None:
                by_epoch.setdefault(int(record["epoch"]), []).append(float(value))
    epochs = sorted(by_epoch)
    return {"epochs": epochs, "recall": [float(np.mean(by_epoch[e])) for e in epochs]}


def build_report(study_dir: str | os.PathLike, reference: str | None = None) -> dict:
    """The report as a JSON-able dict: {"study", "kind", "tables": [...]} (see the module doc)."""
    study_dir = Path(study_dir)
    study = load_study(study_dir)
    rows = study["rows"]
    labels = [row["label"] for row in rows]
    reference = reference or study.get("reference")
    if reference is not None and not names_a_row(
        reference, [(row["label"], row["data_label"]) for row in rows]
    ):
        raise RunError(f"--reference: no row {reference!r} (rows: {', '.join(labels)})")
    tables = []
    for data_label in dict.fromkeys(row["data_label"] for row in rows):
        members = [row for row in rows if row["data_label"] == data_label]
        tables.append(_table(study_dir, study, members, data_label, reference))
    report = {"study": study["name"], "kind": study["kind"], "tables": tables}
    if study.get("derived"):
        report["fractions"] = _fraction_curves(study_dir, study, tables)
    return report


def _fraction_curves(study_dir: Path, study: dict, tables: list[dict]) -> dict:
    """The across-P view of a corruption study (see the module doc), for the first source."""
    derived = study["derived"]
    data_of = {row["data_label"]: row["data"] for row in study["rows"]}
    source = next(iter(derived.values()))["source"]
    points = sorted(
        (derived[data_of[t["data"]]]["fraction"], t)
        for t in tables
        if derived.get(data_of[t["data"]], {}).get("source") == source
    )
    fractions = [fraction for fraction, _ in points]
    names = [_bare(entry["label"], points[0][1]["data"]) for entry in points[0][1]["rows"]]
    reference = _bare(points[0][1]["reference"], points[0][1]["data"])
    index_of = {
        (row["data_label"], _bare(row["label"], row["data_label"])): row["index"]
        for row in study["rows"]
    }
    curves = []
    for name in names:
        entries = [_entry(table, name) for _, table in points]
        curve: dict = {"label": name, "reference": name == reference, "test": {}, "tests": {}}
        for metric in TESTED:
            curve["test"][metric] = [e["test"][metric] if e else _MISSING for e in entries]
            raw = [e["wilcoxon"][metric]["p"] if e else math.nan for e in entries]
            curve["tests"][metric] = {"p": raw, "p_holm": [float(v) for v in holm(raw)]}
        runs = [
            _row_runs(study_dir, study, index_of[table["data"], name])
            for _, table in (points[0], points[-1])
        ]
        curve["runs"] = [e["seeds"] if e else 0 for e in entries]
        curve["_runs"] = runs
        curves.append(curve)
    reference_curve = next(c for c in curves if c["reference"])
    for curve in curves:
        for metric in TESTED:
            first = curve["test"][metric][0]["mean"]
            last = curve["test"][metric][-1]["mean"]
            drop = first - last
            result = {"drop": drop, "relative_drop": drop / first if first else math.nan}
            result["difference"], result["p"] = math.nan, math.nan
            if not curve["reference"] and all(curve["_runs"]) and all(reference_curve["_runs"]):
                result["difference"], result["p"] = _drop_test(
                    curve["_runs"], reference_curve["_runs"], metric
                )
            curve.setdefault("degradation", {})[metric] = result
    for curve in curves:
        del curve["_runs"]
    return {
        "source": source or "synthetic",
        "modality": next(iter(derived.values()))["modality"],
        "mode": next(iter(derived.values()))["mode"],
        "fractions": fractions,
        "reference": reference,
        "rows": curves,
    }


_MISSING = {"mean": math.nan, "std": math.nan}


def _bare(label: str, data_label: str) -> str:
    return label[len(data_label) + 1 :] if label.startswith(data_label + " ") else label


def _entry(table: dict, name: str) -> dict | None:
    entry = next((e for e in table["rows"] if _bare(e["label"], table["data"]) == name), None)
    return entry if entry and entry["seeds"] else None


def _drop_test(runs: list[list[Path]], reference_runs: list[list[Path]], metric: str):
    """(mean per-user difference of drops, Wilcoxon p) between a row and the reference: each
    user's drop = metric at the first P - metric at the last P (averaged over seeds)."""
    drops = []
    for first, last in (runs, reference_runs):
        users_first, values_first = _per_user_mean(first, "test", metric)
        users_last, values_last = _per_user_mean(last, "test", metric)
        common = sorted_intersect(users_first, users_last)
        drop = (
            values_first[np.searchsorted(users_first, common)]
            - values_last[np.searchsorted(users_last, common)]
        )
        drops.append((common, drop))
    (users, drop), (ref_users, ref_drop) = drops
    common = sorted_intersect(users, ref_users)
    difference = drop[np.searchsorted(users, common)] - ref_drop[np.searchsorted(ref_users, common)]
    return float(difference.mean()), wilcoxon_signed_rank(difference)[1]


def _table(study_dir, study, members, data_label, reference) -> dict:
    prefix = f"{data_label} " if len({r["data_label"] for r in study["rows"]}) > 1 else ""
    names = [r["label"] for r in members]
    if reference is None:
        reference = prefix + "full" if prefix + "full" in names else names[0]
    elif reference not in names:
        # the named reference belongs to another data set: the same row name there
        bare = reference.split(" ", 1)[1] if " " in reference else reference
        reference = prefix + bare if prefix + bare in names else names[0]
    entries = []
    runs_of = {}
    for row in members:
        runs = _row_runs(study_dir, study, row["index"])
        runs_of[row["label"]] = runs
        entry = {
            "label": row["label"],
            "model": row["model"],
            "group": row["group"],
            "values": row["values"],
            "seeds": len(runs),
            "valid": {},
            "test": {},
            "reference": row["label"] == reference,
            "chosen": False,
        }
        results = [json.loads((run / "results.json").read_text()) for run in runs]
        for split in ("valid", "test"):
            for metric in METRICS:
                mean, std = mean_std([r[split][metric] for r in results])
                entry[split][metric] = {"mean": mean, "std": std}
        entry["best_epoch"] = mean_std([r["best_epoch"] for r in results])[0]
        entry["run_s"] = mean_std([r["timing"]["total_s"] for r in results])[0]
        entry["cost"] = {key: _mean_of(results, path) for key, path in COST.items()}
        entry["curve"] = _training_curve(runs)
        entries.append(entry)
    reference_entry = next(e for e in entries if e["reference"])
    reference_runs = runs_of[reference]
    for metric in TESTED:
        p_values = []
        for entry in entries:
            entry.setdefault("change", {})[metric] = relative_change(
                entry["test"][metric]["mean"], reference_entry["test"][metric]["mean"]
            )
            runs = runs_of[entry["label"]]
            if entry["reference"] or not runs or not reference_runs:
                statistic, p = math.nan, math.nan
            else:
                statistic, p = paired_test(runs, reference_runs, metric)
            entry.setdefault("wilcoxon", {})[metric] = {"statistic": statistic, "p": p}
            p_values.append(p)
        for entry, adjusted in zip(entries, holm(p_values)):
            entry["wilcoxon"][metric]["p_holm"] = float(adjusted)
    for entry in entries:
        entry["significant"] = any(
            entry["wilcoxon"][m]["p_holm"] < ALPHA for m in TESTED
        )  # NaN compares False
    chosen = []
    if study["kind"] == "sweep":
        groups: dict[tuple, list[dict]] = {}
        for entry in entries:
            if entry["seeds"]:
                groups.setdefault((entry["model"], entry["group"]), []).append(entry)
        for group in groups.values():
            split, metric = SELECTION
            best = max(group, key=lambda e: e[split][metric]["mean"])
            best["chosen"] = True
            chosen.append(best["label"])
    return {
        "data": data_label,
        "reference": reference,
        "selection": f"mean {SELECTION[0]} {SELECTION[1]}",
        "chosen": chosen,
        "rows": entries,
    }


# ---------------------------------------------------------------------------------------------
# Formats


def _mean_of(results: list[dict], path: tuple[str, ...]) -> float:
    """Mean of the value at `path` over the runs that recorded it (NaN if none did)."""
    values = []
    for result in results:
        value = result
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
    return float(np.mean(values)) if values else math.nan


def _cost(entry: dict, key: str) -> str:
    value = entry.get("cost", {}).get(key, math.nan)
    if math.isnan(value):
        return "-"
    if key == "trainable_parameters":
        return f"{value:,.0f}"
    return f"{value:.2f}" if key == "epoch_s" else f"{value:,.0f}"


def _pm(cell: dict) -> str:
    if math.isnan(cell["mean"]):
        return "-"
    if math.isnan(cell["std"]):
        return f"{cell['mean']:.4f}"
    return f"{cell['mean']:.4f} ± {cell['std']:.4f}"


def _change(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:+.1f}%"


def _p(test: dict) -> str:
    if math.isnan(test["p_holm"]):
        return "-"
    return f"{test['p_holm']:.2g}" + ("*" if test["p_holm"] < ALPHA else "")


def _columns() -> list[str]:
    return (
        ["row", "seeds"]
        + [f"valid {SHORT[m]}" for m in METRICS]
        + [f"test {SHORT[m]}" for m in METRICS]
        + [f"Δ test {SHORT[m]}" for m in TESTED]
        + [f"p {SHORT[m]} (Holm)" for m in TESTED]
        + list(COST_HEADERS.values())
    )


def _cells(entry: dict) -> list[str]:
    label = entry["label"]
    if entry["reference"]:
        label += " (reference)"
    if entry["chosen"]:
        label += " (chosen)"
    return (
        [label, str(entry["seeds"])]
        + [_pm(entry["valid"][m]) for m in METRICS]
        + [_pm(entry["test"][m]) for m in METRICS]
        + [_change(entry["change"][m]) for m in TESTED]
        + [_p(entry["wilcoxon"][m]) for m in TESTED]
        + [_cost(entry, key) for key in COST_HEADERS]
    )


def _caption(report: dict, table: dict) -> str:
    text = (
        f"{report['study']} on {table['data']}: mean ± std over the seeds of each row (column "
        f"seeds); Δ and Wilcoxon signed-rank p (per-user test metric averaged over seeds, "
        f"Holm-corrected over the rows; * p < {ALPHA}; - where undefined: the reference itself, "
        f"no complete run, or no per-user difference) against {table['reference']}."
    )
    for label in table["chosen"]:
        entry = next(e for e in table["rows"] if e["label"] == label)
        text += (
            f" Chosen by {table['selection']}: {label}, test Recall@20 "
            f"{_pm(entry['test']['Recall@20'])}, NDCG@20 {_pm(entry['test']['NDCG@20'])}."
        )
    return text


def fractions_markdown(report: dict) -> str:
    """The across-P table: test Recall@20 per row and P, p against the reference at each P
    (Holm over the P values), the drop from the first to the last P and its test."""
    view = report.get("fractions")
    if not view:
        return ""
    fractions = view["fractions"]
    out = [
        f"{report['study']}: test Recall@20 (mean ± std over seeds) against the fraction P of "
        f"items whose {view['modality']!r} features are altered ({view['mode']}, source "
        f"{view['source']}); p: Wilcoxon signed-rank over users against {view['reference']} at "
        f"each P, Holm-corrected over the {len(fractions)} values of P (* p < {ALPHA}); drop: "
        "test Recall@20 at the first P minus at the last, and the Wilcoxon p of each user's drop "
        f"against {view['reference']}'s drop.",
        "",
    ]
    header = ["row"] + [f"P={f:g}" for f in fractions] + ["drop", "drop - reference drop"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for curve in view["rows"]:
        cells = [curve["label"] + (" (reference)" if curve["reference"] else "")]
        for value, p in zip(
            curve["test"]["Recall@20"], curve["tests"]["Recall@20"]["p_holm"], strict=True
        ):
            text = "-" if math.isnan(value["mean"]) else f"{value['mean']:.4f}"
            if not math.isnan(value.get("std", math.nan)):
                text += f" ± {value['std']:.4f}"
            if not math.isnan(p):
                text += f" (p {p:.2g}{'*' if p < ALPHA else ''})"
            cells.append(text)
        degradation = curve["degradation"]["Recall@20"]
        cells.append(
            "-"
            if math.isnan(degradation["drop"])
            else f"{degradation['drop']:.4f} ({100 * degradation['relative_drop']:.0f}%)"
        )
        cells.append(
            "-"
            if math.isnan(degradation["p"])
            else f"{degradation['difference']:+.4f} (p {degradation['p']:.2g})"
        )
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return "\n".join(out)


def to_markdown(report: dict) -> str:
    out = [fractions_markdown(report)] if report.get("fractions") else []
    for table in report["tables"]:
        out.append(_caption(report, table))
        out.append("")
        columns = _columns()
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        for entry in table["rows"]:
            out.append("| " + " | ".join(_cells(entry)) + " |")
        out.append("")
    return "\n".join(out)


def to_latex(report: dict) -> str:
    out = []
    for table in report["tables"]:
        columns = _columns()
        out.append("\\begin{table}[t]")
        out.append("\\caption{" + _latex_escape(_caption(report, table)) + "}")
        out.append("\\begin{tabular}{l" + "r" * (len(columns) - 1) + "}")
        out.append("\\hline")
        out.append(" & ".join(_latex_escape(c) for c in columns) + " \\\\")
        out.append("\\hline")
        for entry in table["rows"]:
            out.append(" & ".join(_latex_escape(c) for c in _cells(entry)) + " \\\\")
        out.append("\\hline")
        out.append("\\end{tabular}")
        out.append("\\end{table}")
        out.append("")
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for plain, escaped in (
        ("\\", "\\textbackslash{}"),
        ("_", "\\_"),
        ("%", "\\%"),
        ("&", "\\&"),
        ("#", "\\#"),
        ("±", "$\\pm$"),
        ("Δ", "$\\Delta$"),
    ):
        text = text.replace(plain, escaped)
    return text


def to_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["data", "row", "model", "seeds", "reference", "chosen"]
    for split in ("valid", "test"):
        for metric in METRICS:
            header += [f"{split}_{metric}_mean", f"{split}_{metric}_std"]
    for metric in TESTED:
        header += [f"change_test_{metric}", f"p_{metric}", f"p_{metric}_holm"]
    header += ["significant", *COST]
    writer.writerow(header)
    for table in report["tables"]:
        for e in table["rows"]:
            line = [table["data"], e["label"], e["model"], e["seeds"], e["reference"], e["chosen"]]
            for split in ("valid", "test"):
                for metric in METRICS:
                    line += [e[split][metric]["mean"], e[split][metric]["std"]]
            for metric in TESTED:
                test = e["wilcoxon"][metric]
                line += [e["change"][metric], test["p"], test["p_holm"]]
            cost = e.get("cost", {})
            writer.writerow(line + [e["significant"]] + [cost.get(key, math.nan) for key in COST])
    return buffer.getvalue()


def to_json(report: dict) -> str:
    return json.dumps(_json_safe(report), indent=2)


def _json_safe(value):
    """NaN -> null, so the file is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


FORMATS = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}
EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex", "json": "json"}


def write_report(report: dict, out: str | os.PathLike) -> list[Path]:
    """Write report.md / .csv / .tex / .json into `out` (atomically); returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, render in FORMATS.items():
        path = out / f"report.{EXTENSIONS[name]}"
        if name == "json":
            write_json(path, _json_safe(report))
        else:
            with atomic_open(path) as handle:
                handle.write(render(report))
        written.append(path)
    return written
