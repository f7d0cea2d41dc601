"""What a classifier's probabilities say beyond its argmax: log loss, ranking (ROC AUC, average precision),
top-k accuracy, calibration (expected calibration error and the reliability diagram's bins), and the
classes it confuses most. Computed on the host from the gathered arrays, by scikit-learn where it has
the metric.

Host memory stays bounded: the evaluation keeps every class's probability only while samples x classes
stays under FULL_PROBABILITIES (25 million values, 100 MB of float32); beyond that it keeps each
sample's TOP_K most probable classes and the true class's probability. Log loss, top-k accuracy and
calibration need only those; ROC AUC and average precision need every class's probability, and are
left out beyond the line (the report says so). A multi-label evaluation keeps every label's probability
(samples x labels float32, plus two int8 indicator matrices): the per-label thresholds need them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

FULL_PROBABILITIES = 25_000_000  # samples x classes kept in full (float32: 100 MB)
TOP_K = 5  # classes kept per sample beyond that line; top-k accuracy is reported with more than this many classes
CALIBRATION_BINS = 15
MOST_CONFUSED = 5


@dataclass
class ClassProbabilities:
    """Each evaluation sample's class probabilities, in full (`full`, N x C) or as its TOP_K most probable classes
    (`top_classes`, `top_probabilities`, descending); `true` is the true class's probability either way.
    Multi-label: `full` holds each label's own (sigmoid) probability, always whole; `true` and the top k are empty."""

    num_classes: int
    true: np.ndarray
    top_classes: np.ndarray
    top_probabilities: np.ndarray
    full: Optional[np.ndarray] = None

    @property
    def confidence(self) -> np.ndarray:
        """The probability of the predicted (most probable) class."""
        return self.top_probabilities[:, 0]


def multi_label_probabilities(scores: np.ndarray) -> ClassProbabilities:
    """Multi-label: each label's probability (`full`, samples x labels, kept whole); no true class, no top k."""
    n = len(scores)
    return ClassProbabilities(scores.shape[1], np.zeros(0, np.float32), np.zeros((n, 0), np.int64),
                              np.zeros((n, 0), np.float32), scores)


def keep_full(num_samples: Optional[int], num_classes: int) -> bool:
    """Whether every class's probability is kept (samples x classes under FULL_PROBABILITIES; a stream, whose
    length is unknown, keeps them up to 100 classes)."""
    if num_samples is None:
        return num_classes <= 100
    return num_samples * num_classes <= FULL_PROBABILITIES


def summarize(probabilities: np.ndarray, labels: np.ndarray, full: bool) -> ClassProbabilities:
    """A batch's (or all samples') ClassProbabilities from their N x C probabilities."""
    k = min(TOP_K, probabilities.shape[1])
    if k < probabilities.shape[1]:  # the k largest in O(classes), then those k in order (a copy: not a view
        top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]  # that would keep the whole batch alive)
        order = np.argsort(-np.take_along_axis(probabilities, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
    else:
        top = np.argsort(-probabilities, axis=1, kind="stable")
    rows = np.arange(len(labels))
    true = probabilities[rows, np.clip(labels, 0, None)]
    return ClassProbabilities(probabilities.shape[1], true, top, np.take_along_axis(probabilities, top, axis=1),
                              probabilities if full else None)


class Collector:
    """Batches of an evaluation (predictions, labels, losses, probabilities) written into arrays allocated once for
    the expected number of samples (grown by doubling past it): small arrays kept from every batch between the
    batches' large temporary ones would fragment the heap (measured: 0.9 GB of resident memory left behind by
    100k samples of 1,000 classes, against 0.05 GB written in place)."""

    def __init__(self, expected: int, num_classes: int, full: bool, multi_label: bool = False):
        self.num_classes, self.full, self.multi_label, self.size = num_classes, full, multi_label, 0
        k = min(TOP_K, num_classes)
        if multi_label:  # indicator rows, and every label's probability
            self.arrays = {"predictions": np.empty((expected, num_classes), np.int8),
                           "labels": np.empty((expected, num_classes), np.int8),
                           "losses": np.empty(expected, np.float32),
                           "full": np.empty((expected, num_classes), np.float32)}
            return
        self.arrays = {"predictions": np.empty(expected, np.int64), "labels": np.empty(expected, np.int64),
                       "losses": np.empty(expected, np.float32), "true": np.empty(expected, np.float32),
                       "top_classes": np.empty((expected, k), np.int64),
                       "top_probabilities": np.empty((expected, k), np.float32)}
        if full:
            self.arrays["full"] = np.empty((expected, num_classes), np.float32)

    def add(self, predictions: np.ndarray, labels: np.ndarray, losses: np.ndarray, probabilities: np.ndarray) -> None:
        """One batch, gathered, on the host."""
        end = self.size + len(labels)
        if end > len(self.arrays["labels"]):
            for name, array in self.arrays.items():
                grown = np.empty((max(2 * len(array), end), *array.shape[1:]), array.dtype)
                grown[:self.size] = array[:self.size]
                self.arrays[name] = grown
        values = {"predictions": predictions, "labels": labels, "losses": losses, "full": probabilities}
        if not self.multi_label:
            kept = summarize(probabilities, labels, self.full)
            values.update(true=kept.true, top_classes=kept.top_classes, top_probabilities=kept.top_probabilities,
                          full=kept.full)
        for name, array in self.arrays.items():
            array[self.size:end] = values[name]
        self.size = end

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, ClassProbabilities]:
        """predictions, labels, losses and the ClassProbabilities of every sample added."""
        a = {name: array[:self.size] for name, array in self.arrays.items()}
        if self.multi_label:
            return a["predictions"], a["labels"], a["losses"], multi_label_probabilities(a["full"])
        return a["predictions"], a["labels"], a["losses"], ClassProbabilities(
            self.num_classes, a["true"], a["top_classes"], a["top_probabilities"], a.get("full"))


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """The reliability diagram's equal-width confidence bins: each bin's upper edge, sample count, mean
    confidence and accuracy (null where a bin is empty)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (lo, hi], 0 in the first
    count = np.bincount(index, minlength=bins)
    mean = lambda values: [float(v) if n else None for v, n in  # noqa: E731
                           zip(np.bincount(index, weights=values, minlength=bins) / np.maximum(count, 1), count)]
    return {"upper_edge": edges[1:].tolist(), "count": count.tolist(), "confidence": mean(confidence),
            "accuracy": mean(correct.astype(np.float64))}


def expected_calibration_error(bins: dict[str, list]) -> float:
    """Sum over bins of (samples in the bin / samples) x |accuracy - mean confidence|."""
    total = sum(bins["count"])
    return float(sum(n / total * abs(a - c) for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"])
                     if n))


def most_confused(confusion: np.ndarray, class_names: list[str], limit: int = MOST_CONFUSED) -> list[dict[str, Any]]:
    """The largest off-diagonal cells of the confusion matrix: which true class is taken for which, how often."""
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    cells = np.argsort(-off, axis=None, kind="stable")[:limit]
    return [{"true": class_names[t], "predicted": class_names[p], "count": int(off[t, p])}
            for t, p in (np.unravel_index(cell, off.shape) for cell in cells) if off[t, p] > 0]


def probability_metrics(probabilities: ClassProbabilities, labels: np.ndarray,
                        predictions: np.ndarray) -> dict[str, Any]:
    """log_loss; roc_auc and average_precision (binary: of the second class; more classes: the macro average
    of one-vs-rest, over the classes that have both samples and non-samples when some have none);
    top_5_accuracy (more than five classes); expected_calibration_error and the calibration bins (the
    reliability diagram). scikit-learn computes them where it has the metric and the full probabilities;
    `probabilities_kept` says what the evaluation kept."""
    from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, top_k_accuracy_score

    n, classes, full = len(labels), probabilities.num_classes, probabilities.full
    everything = list(range(classes))
    metrics: dict[str, Any] = {}
    if full is not None:
        metrics["log_loss"] = float(log_loss(labels, full, labels=everything))
        present = [c for c in everything if 0 < (labels == c).sum() < n]
        if classes == 2 and len(present) == 2:
            metrics["roc_auc"] = float(roc_auc_score(labels, full[:, 1]))
            metrics["average_precision"] = float(average_precision_score(labels == 1, full[:, 1]))
        elif classes > 2 and len(present) == classes:
            metrics["roc_auc"] = float(roc_auc_score(labels, full, multi_class="ovr", average="macro",
                                                     labels=everything))
            metrics["average_precision"] = float(average_precision_score(np.eye(classes)[labels], full,
                                                                         average="macro"))
        elif present:
            metrics["roc_auc"] = float(np.mean([roc_auc_score(labels == c, full[:, c]) for c in present]))
            metrics["average_precision"] = float(np.mean([average_precision_score(labels == c, full[:, c])
                                                          for c in present]))
        if classes > TOP_K:
            metrics[f"top_{TOP_K}_accuracy"] = float(top_k_accuracy_score(labels, full, k=TOP_K, labels=everything))
    else:  # what the kept classes give: the true class's probability (clipped as scikit-learn clips), the top k
        eps = np.finfo(np.float32).eps
        metrics["log_loss"] = float(-np.mean(np.log(np.clip(probabilities.true, eps, 1 - eps))))
        metrics[f"top_{TOP_K}_accuracy"] = float(np.mean((probabilities.top_classes == labels[:, None]).any(axis=1)))
    bins = calibration_bins(probabilities.confidence, predictions == labels)
    metrics["expected_calibration_error"] = expected_calibration_error(bins)
    metrics["calibration"] = bins
    metrics["probabilities_kept"] = "all classes" if full is not None else \
        f"the top {probabilities.top_classes.shape[1]} classes and the true one: no roc_auc or average_precision"
    return metrics
