"""The report's probability metrics: equal to scikit-learn's (or to a plain reference) on the same gathered arrays,
with the probabilities kept in full and past the size where only the top classes are kept; gathered from 2
processes as from one; written out as calibration.png and errors.csv."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    top_k_accuracy_score,
)

from framework.evaluate import probabilities as module
from framework.evaluate.evaluation import Predictions, build_report

from helpers import debug_launch, read_json, run_digits_in_process


def _drawn(samples: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a fair but imperfect classifier (softmax of noisy logits) and the true labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, samples)
    logits = rng.normal(size=(samples, classes)) + 2.0 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities.astype(np.float32), labels


def _report(probabilities: np.ndarray, labels: np.ndarray, full: bool = True, errors: int = 0):
    predictions = probabilities.argmax(axis=1)
    kept = module.summarize(probabilities, labels, full)
    names = [f"c{i}" for i in range(probabilities.shape[1])]
    return build_report(Predictions(predictions, labels, -np.log(kept.true), kept), names, errors=errors)


def _reference_ece(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error, a sample at a time: bin (lo, hi] of the confidence (0 in the first)."""
    total, error = len(confidence), 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i, c in enumerate(confidence) if (lo < c <= hi) or (b == 0 and c == 0)]
        if inside:
            error += len(inside) / total * abs(np.mean(correct[inside]) - np.mean(confidence[inside]))
    return error


@pytest.mark.parametrize("classes", [2, 4, 12])
def test_probability_metrics_are_scikit_learns(classes):
    probabilities, labels = _drawn(400, classes)
    metrics = _report(probabilities, labels).metrics
    everything = list(range(classes))
    assert metrics["log_loss"] == pytest.approx(log_loss(labels, probabilities, labels=everything), rel=1e-9)
    if classes == 2:
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), rel=1e-12)
        assert metrics["average_precision"] == pytest.approx(
            average_precision_score(labels, probabilities[:, 1]), rel=1e-12)
    else:
        assert metrics["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"), rel=1e-12)
        assert metrics["average_precision"] == pytest.approx(
            np.mean([average_precision_score(labels == c, probabilities[:, c]) for c in everything]), rel=1e-12)
    if classes > 5:
        assert metrics["top_5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probabilities, k=5), rel=1e-12)
    else:
        assert "top_5_accuracy" not in metrics
    correct = probabilities.argmax(axis=1) == labels
    assert metrics["expected_calibration_error"] == pytest.approx(
        _reference_ece(probabilities.max(axis=1), correct), rel=1e-6)  # float32 confidences summed two ways
    assert sum(metrics["calibration"]["count"]) == 400
    confusion = confusion_matrix(labels, probabilities.argmax(axis=1), labels=everything)
    np.fill_diagonal(confusion, 0)
    top = metrics["most_confused"][0]
    assert top["count"] == confusion.max() and confusion[int(top["true"][1:]), int(top["predicted"][1:])] == top["count"]


def test_past_the_size_line_only_the_top_classes_are_kept_and_what_they_give_is_unchanged(monkeypatch):
    """1,000 classes: beyond FULL_PROBABILITIES the evaluation keeps 5 classes a sample and the true one, and log
    loss, top-5 accuracy and calibration come out as from the full matrix; ROC AUC and average precision are
    left out, and the report says so."""
    probabilities, labels = _drawn(300, 1000, seed=1)
    full = _report(probabilities, labels).metrics
    monkeypatch.setattr(module, "FULL_PROBABILITIES", 1000)
    assert not module.keep_full(300, 1000) and module.keep_full(1, 1000)
    kept = _report(probabilities, labels, full=module.keep_full(300, 1000))
    for name in ("log_loss", "top_5_accuracy", "expected_calibration_error"):
        assert kept.metrics[name] == pytest.approx(full[name], rel=1e-6), name
    assert "roc_auc" not in kept.metrics and "average_precision" not in kept.metrics
    assert "no roc_auc or average_precision" in kept.text


def test_the_most_confident_errors_come_first():
    probabilities, labels = _drawn(200, 3, seed=2)
    report = _report(probabilities, labels, errors=10)
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    expected = wrong[np.argsort(-probabilities[wrong].max(axis=1), kind="stable")][:10]
    assert [row[0] for row in report.errors] == expected.tolist()
    assert all(row[3] >= later[3] for row, later in zip(report.errors, report.errors[1:]))
    assert all(row[1] == labels[row[0]] and row[2] == predicted[row[0]] for row in report.errors)


def _predict_on_processes(out_file: str) -> None:
    from accelerate import Accelerator
    from datasets import Dataset

    from framework.evaluate.evaluation import predict

    from helpers import per_sample_cross_entropy

    accelerator = Accelerator(cpu=True)
    rng = np.random.default_rng(5)
    dataset = Dataset.from_dict({"x": rng.normal(size=(37, 4)).astype(np.float32).tolist(),
                                 "labels": rng.integers(0, 3, 37).tolist()}).with_format("torch")
    loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=5))
    torch.manual_seed(0)
    model = accelerator.prepare(torch.nn.Linear(4, 3))

    class Named(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    result = predict(accelerator, Named(model), loader, per_sample_cross_entropy, show_progress=False)
    if accelerator.is_main_process:
        with open(out_file, "w") as handle:
            json.dump({"full": result.probabilities.full.tolist(), "labels": result.labels.tolist()}, handle)


def test_probabilities_gathered_from_two_processes_are_one_processes(tmp_path):
    debug_launch(_predict_on_processes, str(tmp_path / "one.json"), num_processes=1)
    debug_launch(_predict_on_processes, str(tmp_path / "two.json"), num_processes=2)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert len(two["labels"]) == 37 and two["labels"] == one["labels"]  # each sample once, in order
    np.testing.assert_allclose(two["full"], one["full"], rtol=1e-6)
    np.testing.assert_allclose(np.sum(two["full"], axis=1), 1.0, rtol=1e-5)


def test_a_run_writes_calibration_png_and_errors_csv(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "20", "--mixed_precision", "no", "--save_errors", "7") == 0
    report = read_json(tmp_path / "report.json")
    assert {"log_loss", "roc_auc", "top_5_accuracy", "expected_calibration_error", "calibration"} <= report.keys()
    assert (tmp_path / "calibration.png").stat().st_size > 1000
    rows = list(csv.DictReader(open(tmp_path / "errors.csv")))
    assert len(rows) == 7 and list(rows[0]) == ["index", "true", "predicted", "score", "true_probability"]
    assert all(row["true"] != row["predicted"] for row in rows)
    assert [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows), reverse=True)
    errors = 360 - round(report["accuracy"] * 360)  # digits' 360 evaluation samples
    assert errors >= 7
