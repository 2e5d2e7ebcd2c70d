"""Pictures of the analyses, drawn with matplotlib (optional: `pip install 'rearm[plot]'`).

matplotlib is imported only here, through its object-oriented API with the Agg canvas, so no
display and no global backend setting are involved. Files are written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from rearm.errors import ConfigError
from rearm.io import atomic_open


def require_matplotlib() -> None:
    """ConfigError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "drawing a PNG needs the optional matplotlib package: pip install 'rearm[plot]'"
        ) from None


def check_png_path(path: str | os.PathLike) -> None:
    """ConfigError unless `path` names a .png file (that may not exist yet)."""
    if os.fspath(path).lower().endswith(".png") and not os.path.isdir(path):
        return
    raise ConfigError(f"--out {os.fspath(path)}: expected a file name ending in .png")


def plot_heatmap(
    path: str | os.PathLike,
    sample,
    panels: Sequence[tuple[str, np.ndarray, dict]],
    user_labels: Sequence[str] | None = None,
) -> None:
    """Write a PNG with one heatmap per run, side by side.

    Args:
        path: the .png file to write (atomically).
        sample: the rearm.analysis.heatmap.HeatmapSample the matrices were computed on.
        panels: (title, probabilities float [n, m], summary from heatmap_summary) per run.
        user_labels: row labels (default: the user indices).
    """
    require_matplotlib()
    check_png_path(path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, columns = sample.heldout.shape
    width = min(6.0, 1.2 + 0.08 * columns)
    height = min(6.0, 1.4 + 0.16 * rows)
    figure = Figure(figsize=(width * len(panels) + 1.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    held_rows, held_columns = np.nonzero(sample.heldout)
    negative_rows, negative_columns = np.nonzero(sample.noninteracted)
    # one colour scale for all panels, spanning their values: scores trained with BPR are not
    # calibrated, and on [0, 1] probabilities that all sit near 1 would look uniform
    low = min(float(np.min(p)) for _, p, _ in panels)
    high = max(float(np.max(p)) for _, p, _ in panels)
    image = None
    for axis, (title, probabilities, summary) in zip(axes, panels):
        image = axis.imshow(
            probabilities,
            vmin=low,
            vmax=max(high, low + 1e-6),
            cmap="viridis",
            aspect="auto",
            interpolation="none",
        )
        axis.scatter(held_columns, held_rows, s=7, c="white", marker="o", linewidths=0)
        axis.scatter(negative_columns, negative_rows, s=7, c="black", marker="x", linewidths=0.6)
        axis.axvline(sample.heldout_columns - 0.5, color="white", linewidth=1.0)
        auc = summary["auc"]
        negative = summary["mean_noninteracted_probability"]
        axis.set_title(
            f"{title}\nheld-out {summary['mean_heldout_probability']:.2f} | "
            f"non-interacted {'-' if negative is None else f'{negative:.2f}'} | "
            f"AUC {'-' if auc is None else f'{auc:.3f}'}",
            fontsize=8,
        )
        axis.set_xlabel(
            f"items: {sample.heldout_columns} held-out | {columns - sample.heldout_columns} "
            "sampled non-interacted",
            fontsize=7,
        )
        axis.set_xticks([])
        labels = user_labels if user_labels is not None else [str(u) for u in sample.users]
        if rows <= 40:
            axis.set_yticks(range(rows), labels, fontsize=6)
        else:
            axis.set_yticks([])
        axis.set_ylabel(f"{rows} sampled {sample.split} users", fontsize=7)
    figure.supxlabel(
        "white dot: a held-out pair of that user; black x: a non-interacted item sampled for "
        "that user (only these pairs enter the means and the AUC)",
        fontsize=7,
    )
    colorbar = figure.colorbar(image, ax=list(axes), shrink=0.9)
    colorbar.set_label("sigmoid(score) (scale shared by the panels)", fontsize=7)
    colorbar.ax.tick_params(labelsize=6)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
