"""The multi-label report: per-label precision, recall and F1 (scikit-learn's classification_report of the
indicator matrices) with micro, macro, weighted and samples averages, subset accuracy (every label of a sample
right), Hamming loss, log loss (the mean binary cross entropy over samples x labels), ROC AUC and average
precision (macro over the labels that have both positives and negatives in the evaluation split), the
thresholds that decided, and the samples most confidently wrong."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from framework.evaluate.predictions import DEFAULT_THRESHOLD, Predictions, Report


def multi_label_metrics(labels: np.ndarray, predictions: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The numbers beside the per-label report, by scikit-learn on the gathered arrays."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        log_loss,
        roc_auc_score,
    )

    n = len(labels)
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(labels, predictions)),  # subset accuracy: the whole set right
        "micro_f1": float(f1_score(labels, predictions, average="micro", zero_division=0)),
        "samples_f1": float(f1_score(labels, predictions, average="samples", zero_division=0)),
        "hamming_loss": float(hamming_loss(labels, predictions)),
        "log_loss": float(log_loss(labels.ravel(), scores.ravel().astype(np.float64), labels=[0, 1])),
    }
    counts = labels.sum(axis=0)
    present = np.flatnonzero((counts > 0) & (counts < n))
    if len(present):
        metrics["roc_auc"] = float(roc_auc_score(labels[:, present], scores[:, present], average="macro"))
        metrics["average_precision"] = float(average_precision_score(labels[:, present], scores[:, present],
                                                                     average="macro"))
    if len(present) < labels.shape[1]:
        metrics["ranking_labels"] = f"{len(present)} of {labels.shape[1]} labels (the others have no positive " \
                                    f"or no negative evaluation sample)"
    return metrics


def most_confident_errors(predictions: Predictions, limit: int) -> list[tuple[int, list[int], list[int], float, float]]:
    """(index, true labels, predicted labels, score, nan) of the `limit` samples whose label set is wrong, the most
    confident first; a sample's score is the probability behind its most confident wrong decision (p for a label
    predicted but absent, 1 - p for one missed)."""
    scores, labels, decided = predictions.probabilities.full, predictions.labels, predictions.predictions
    wrong_cells = decided != labels
    wrong = np.flatnonzero(wrong_cells.any(axis=1))
    confidence = np.where(decided == 1, scores, 1.0 - scores)
    score = np.where(wrong_cells, confidence, -1.0).max(axis=1)
    order = wrong[np.argsort(-score[wrong], kind="stable")][:limit]
    return [(int(i), np.flatnonzero(labels[i]).tolist(), np.flatnonzero(decided[i]).tolist(), float(score[i]),
             float("nan")) for i in order]


def multi_label_report(predictions: Predictions, class_names: Sequence[str], errors: int = 0) -> Report:
    """The report of multi-label predictions (indicator matrices and each label's probability)."""
    from sklearn.metrics import classification_report, multilabel_confusion_matrix

    labels, decided = predictions.labels, predictions.predictions
    scores = predictions.probabilities.full
    kwargs = dict(target_names=list(class_names), zero_division=0, digits=4)
    text = classification_report(labels, decided, **kwargs)
    metrics: dict[str, Any] = classification_report(labels, decided, output_dict=True, **kwargs)
    found = multi_label_metrics(labels, decided, scores)
    metrics.update(found)
    thresholds = predictions.thresholds
    if thresholds is None:
        thresholds = np.full(len(class_names), DEFAULT_THRESHOLD, np.float32)
    metrics["decision_thresholds"] = {name: float(t) for name, t in zip(class_names, thresholds)}
    names = ("accuracy", "hamming_loss", "log_loss", "roc_auc", "average_precision")
    shown = {"accuracy": "subset accuracy"}
    text += "\n" + "".join(f"{shown.get(name, name):>26} {found[name]:.4f}\n" for name in names if name in found)
    if "ranking_labels" in found:
        text += f"{'':>26} (roc_auc, average_precision: {found['ranking_labels']})\n"
    distinct = np.unique(thresholds)
    text += f"{'decision thresholds':>26} " + (f"{distinct[0]:.4f} for every label\n" if len(distinct) == 1 else
                                               f"per label, {distinct.min():.4f} to {distinct.max():.4f} "
                                               f"(report.json: decision_thresholds)\n")
    confusion = multilabel_confusion_matrix(labels, decided)  # labels x 2 x 2: [[tn, fp], [fn, tp]]
    wrong = most_confident_errors(predictions, errors) if errors else None
    return Report(text, metrics, float(predictions.losses.mean()), confusion, {}, wrong)
