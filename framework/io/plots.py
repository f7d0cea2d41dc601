"""loss.png and confusion_matrix.png at the end of a run (matplotlib is an optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MISSING = ("note: matplotlib is not installed, so no loss.png or confusion_matrix.png "
           "(pip install matplotlib, or the project's 'plots' extra)")


MAX_ANNOTATED_CLASSES = 30  # above this, confusion_matrix.png is colours only: no per-cell counts, no class names
MAX_FIGURE_INCHES = 16


def save_plots(output_dir: str | Path, records: list[dict], confusion: np.ndarray,
               class_names: Sequence[str]) -> Optional[str]:
    """Write loss.png (train and eval loss over optimizer steps) and confusion_matrix.png (counts and class
    names up to MAX_ANNOTATED_CLASSES classes; beyond, a heat map whose axes are class indices in
    labels.json order, of at most MAX_FIGURE_INCHES square).

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

    from sklearn.metrics import ConfusionMatrixDisplay

    # Half an inch a class up to a readable size; beyond that a fixed-size heat map, since a picture of
    # 1,000 classes at that scale would be 50,000 pixels square (7.6 GB in matplotlib, measured).
    many = len(class_names) > MAX_ANNOTATED_CLASSES
    size = min(max(4, 0.5 * len(class_names) + 2), MAX_FIGURE_INCHES)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(confusion, display_labels=None if many else list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=many, xticks_rotation=45, include_values=not many)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)
    return None
