"""Evaluation: sklearn's report on gathered predictions, each evaluation sample exactly once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset

from framework.evaluate.evaluation import Predictions, build_report, predict

from helpers import debug_launch, per_sample_cross_entropy


def test_report_on_known_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 2])
    report = build_report(Predictions(preds, labels, np.full(10, 0.5)), ["cat", "dog", "bird", "fish"])
    m = report.metrics
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["cat"]["precision"] == pytest.approx(2 / 3) and m["cat"]["recall"] == pytest.approx(2 / 3)
    assert m["dog"]["precision"] == pytest.approx(2 / 3) and m["dog"]["recall"] == pytest.approx(1.0)
    assert m["bird"]["precision"] == pytest.approx(1.0) and m["bird"]["recall"] == pytest.approx(4 / 5)
    assert m["fish"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}  # absent, no warning
    assert m["macro avg"]["support"] == 10
    assert report.loss == pytest.approx(0.5)
    assert report.confusion.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 4, 0], [0, 0, 0, 0]]
    assert "fish" in report.text and "accuracy" in report.text


class IdentityClassifier(torch.nn.Module):
    """Predicts class = the sample's id, so gathered predictions reveal which samples were scored."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.bias = torch.nn.Parameter(torch.zeros(num_classes))

    def forward(self, sample_id):
        return torch.nn.functional.one_hot(sample_id, self.num_classes).float() * 10 + self.bias


def _gather_13_on_two_processes(out_file: str) -> None:
    accelerator = Accelerator(cpu=True)
    dataset = Dataset.from_dict({"sample_id": list(range(13)), "labels": list(range(13))}).with_format("torch")
    loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=4))
    model = accelerator.prepare(IdentityClassifier(13))
    result = predict(accelerator, model, loader, per_sample_cross_entropy, show_progress=False)
    if accelerator.is_main_process:
        with open(out_file, "w") as handle:
            json.dump({"world": accelerator.num_processes, "preds": result.predictions.tolist(),
                       "labels": result.labels.tolist()}, handle)


def test_two_processes_gather_each_sample_exactly_once(tmp_path):
    out = tmp_path / "gathered.json"
    debug_launch(_gather_13_on_two_processes, str(out))
    result = json.loads(out.read_text())
    assert result["world"] == 2
    assert sorted(result["labels"]) == list(range(13))  # 13 = not divisible by batch 4 x 2 processes
    assert result["preds"] == result["labels"]


def _gather_one_sample_on_two_processes(out_file: str) -> None:
    accelerator = Accelerator(cpu=True)
    dataset = Dataset.from_dict({"sample_id": [0], "labels": [0]}).with_format("torch")
    loader = accelerator.prepare(torch.utils.data.DataLoader(dataset, batch_size=4))
    model = accelerator.prepare(IdentityClassifier(2))
    result = predict(accelerator, model, loader, per_sample_cross_entropy, show_progress=False)
    if accelerator.is_main_process:
        with open(out_file, "w") as handle:
            json.dump({"labels": result.labels.tolist(), "preds": result.predictions.tolist()}, handle)


def test_evaluation_set_smaller_than_the_number_of_processes_works(tmp_path):
    out = tmp_path / "gathered.json"
    debug_launch(_gather_one_sample_on_two_processes, str(out))
    assert json.loads(out.read_text()) == {"labels": [0], "preds": [0]}
