"""loss.png, confusion_matrix.png and calibration.png at the end of a run (matplotlib is an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MISSING = ("note: matplotlib is not installed, so no loss.png, confusion_matrix.png or calibration.png "
           "(pip install matplotlib, or the project's 'plots' extra)")


MAX_ANNOTATED_CLASSES = 30  # above this, confusion_matrix.png is colours only: no per-cell counts, no class names
MAX_FIGURE_INCHES = 16


def save_plots(output_dir: str | Path, records: list[dict], confusion: np.ndarray,
               class_names: Sequence[str], calibration: Optional[dict] = None) -> Optional[str]:
    """Write loss.png (train and eval loss over optimizer steps), confusion_matrix.png (counts and class
    names up to MAX_ANNOTATED_CLASSES classes; beyond, a heat map whose axes are class indices in
    labels.json order, of at most MAX_FIGURE_INCHES square) and, given the report's calibration bins,
    calibration.png (the reliability diagram: accuracy against confidence per bin, and how many samples
    each bin holds).

    Returns a one-line note instead when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return MISSING
    out = Path(output_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label, style in ((train, "train", "-"), (evals, "eval", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)

    if confusion.ndim == 3:  # multi-label: one 2 x 2 matrix per label, in report.json's per-label rows instead
        return None
    from sklearn.metrics import ConfusionMatrixDisplay

    # Half an inch a class up to a readable size; beyond that a fixed-size heat map, since a picture of
    # 1,000 classes at that scale would be 50,000 pixels square (7.6 GB in matplotlib, measured).
    many = len(class_names) > MAX_ANNOTATED_CLASSES
    size = min(max(4, 0.5 * len(class_names) + 2), MAX_FIGURE_INCHES)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(confusion, display_labels=None if many else list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=many, xticks_rotation=45, include_values=not many)
    if many:  # a tick per class would be thousands of labels to lay out (seconds), unreadable anyway
        from matplotlib.ticker import MaxNLocator

        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(10, integer=True))
            axis.set_major_formatter("{x:.0f}")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    if calibration is not None:
        _reliability_diagram(plt, calibration, out / "calibration.png")
    return None


def _reliability_diagram(plt, bins: dict, path: Path) -> None:
    edges = [0.0, *bins["upper_edge"]]
    width = edges[1] - edges[0]
    filled = [i for i, n in enumerate(bins["count"]) if n]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=(3, 1), sharex=True)
    top.bar([edges[i] for i in filled], [bins["accuracy"][i] for i in filled], width=width, align="edge",
            edgecolor="black", label="accuracy in the bin")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.plot([bins["confidence"][i] for i in filled], [bins["accuracy"][i] for i in filled], "o", color="black",
             markersize=3, label="(mean confidence, accuracy) of a bin")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(edges[:-1], bins["count"], width=width, align="edge", edgecolor="black")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("samples")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
