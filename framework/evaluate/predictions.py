"""What an evaluation produces: the gathered Predictions (one entry per evaluation sample) and the Report built
from them, and how thresholds decide binary and multi-label predictions."""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from framework.evaluate.probabilities import TOP_K, ClassProbabilities

DEFAULT_THRESHOLD = 0.5  # a multi-label prediction without thresholds: every label of probability >= 0.5


@dataclass
class Predictions:
    """One entry per evaluation sample, in dataset order, on the host; `probabilities`: each sample's class
    probabilities (in full, or its most probable classes past a size: framework.evaluate.probabilities)."""

    predictions: np.ndarray
    labels: np.ndarray
    losses: np.ndarray
    probabilities: Optional[ClassProbabilities] = None
    # Multi-label (framework.evaluate.multi_label): predictions and labels are samples x labels indicator
    # matrices and probabilities.full each label's sigmoid probability. The thresholds that decided the
    # predictions (one per label; a binary task's one, on the second class): None where none was set.
    thresholds: Optional[np.ndarray] = None

    @property
    def multi_label(self) -> bool:
        """Whether each sample has a set of labels (2-D labels) rather than one class."""
        return self.labels.ndim == 2


PROBABILITY_METRICS = ("log_loss", "roc_auc", "average_precision", f"top_{TOP_K}_accuracy",
                       "expected_calibration_error")
MULTI_LABEL_METRICS = ("micro_f1", "samples_f1", "hamming_loss")


@dataclass
class Report:
    """sklearn's classification report as text and as a dict, plus the mean evaluation loss."""

    text: str
    metrics: dict[str, Any]
    loss: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    extra: dict[str, float] = field(default_factory=dict)  # a recipe's own metrics (Recipe.extra_metrics)
    errors: Optional[list[tuple[int, int, int, float, float]]] = None  # (index, true, predicted, score, true prob)

    def summary(self) -> dict[str, float]:
        """The headline numbers logged to metrics.jsonl (the probability metrics there are, and a recipe's extra
        metrics, as eval_<name>)."""
        return {
            "eval_loss": self.loss,
            "eval_accuracy": self.metrics["accuracy"],
            "eval_macro_f1": self.metrics["macro avg"]["f1-score"],
            "eval_weighted_f1": self.metrics["weighted avg"]["f1-score"],
            **{f"eval_{name}": self.metrics[name] for name in PROBABILITY_METRICS if name in self.metrics},
            **{f"eval_{name}": self.metrics[name] for name in MULTI_LABEL_METRICS if name in self.metrics},
            **{f"eval_{name}": value for name, value in self.extra.items()},
        }



def decide(predictions: Predictions, thresholds: Optional[np.ndarray]) -> Predictions:
    """`predictions` decided by `thresholds`: multi-label, each label whose probability reaches its threshold; binary,
    the second class where its probability reaches the threshold. None leaves them as they are."""
    if thresholds is None:
        return predictions
    thresholds = np.asarray(thresholds, np.float32)
    full = predictions.probabilities.full
    if predictions.multi_label:
        decided = (full >= thresholds[None, :]).astype(np.int8)
    else:
        decided = (full[:, 1] >= thresholds[0]).astype(predictions.predictions.dtype)
    return dataclasses.replace(predictions, predictions=decided, thresholds=thresholds)


def write_predictions(path: Path, ids: list, probabilities: np.ndarray, class_names: list[str],
                      thresholds: Optional[np.ndarray] = None, multi_label: bool = False,
                      delimiter: str = ",") -> None:
    """predictions.csv: id, prediction (class name), score (its probability), one probability column per class.
    Multi-label: `labels`, the predicted label set joined by `delimiter` (the labels whose probability reaches
    their threshold, 0.5 without one), then each label's probability. A binary task with a threshold predicts
    the second class where its probability reaches it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if multi_label:
        cut = thresholds if thresholds is not None else np.full(len(class_names), 0.5, np.float32)
        writer.writerow(["id", "labels", *[f"prob_{name}" for name in class_names]])
        for row_id, row in zip(ids, probabilities):
            chosen = delimiter.join(name for name, p, t in zip(class_names, row, cut) if p >= t)
            writer.writerow([row_id, chosen, *(f"{p:.6f}" for p in row)])
    else:
        writer.writerow(["id", "prediction", "score", *[f"prob_{name}" for name in class_names]])
        for row_id, row in zip(ids, probabilities):
            best = int(row.argmax()) if thresholds is None else int(row[1] >= thresholds[0])
            writer.writerow([row_id, class_names[best], f"{row[best]:.6f}", *(f"{p:.6f}" for p in row)])
    from framework.io.files import write_atomic
    write_atomic(path, buffer.getvalue())
