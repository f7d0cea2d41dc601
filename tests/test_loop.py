"""The loop: loss falls, step counts, max_steps, eval_steps, and the non-finite guard."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from framework import TrainingConfig
from framework.core.errors import EXIT_DIVERGED, run_main
from framework.train.loop import NonFiniteLossError

from helpers import fit_model, read_json, read_metrics, run_digits_in_process


def test_loss_falls_and_outputs_are_complete(tmp_path):
    assert run_digits_in_process(tmp_path, "--num_train_epochs", "3", "--logging_steps", "5") == 0
    train = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert [r["step"] for r in train] == list(range(5, 135 + 1, 5))
    evals = [r for r in read_metrics(tmp_path) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [45, 90, 135]  # one evaluation per epoch
    report = read_json(tmp_path / "report.json")
    assert report["accuracy"] == evals[-1]["eval_accuracy"]
    assert {"config.yaml", "report.json", "report.txt", "summary.json", "metrics.jsonl",
            "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    from PIL import Image

    for plot in ("loss.png", "confusion_matrix.png"):
        with Image.open(tmp_path / plot) as image:
            assert image.format == "PNG" and min(image.size) >= 300


def test_optimizer_steps_per_epoch_is_ceil_of_batches_over_accumulation(tmp_path):
    assert run_digits_in_process(tmp_path, "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
                                 "--gradient_accumulation_steps", "3") == 0
    batches = math.ceil(1437 / 8)
    summary = read_json(tmp_path / "summary.json")
    assert summary["optimizer_steps"] == math.ceil(batches / 3) == 60
    assert summary["effective_batch_size"] == 24
    assert summary["train_samples"] == 1437


def test_max_steps_stops_mid_epoch_and_evaluates(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "12", "--eval_steps", "5", "--logging_steps", "4") == 0
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "eval_loss" in r] == [5, 10, 12]
    assert [r["step"] for r in records if "loss" in r] == [4, 8, 12]
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 12


def test_warmup_then_linear_decay_in_metrics(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "10", "--warmup_steps", "4", "--logging_steps", "1",
                                 "--learning_rate", "0.01") == 0
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    expected = [0.01 * (s + 1) / 5 for s in range(4)] + [0.01 * (1 - (s - 4) / 6) for s in range(4, 10)]
    assert lrs == pytest.approx(expected)


def test_finished_run_is_not_clobbered(tmp_path, capsys):
    assert run_digits_in_process(tmp_path, "--max_steps", "2") == 0
    before = (tmp_path / "model.safetensors").read_bytes()
    assert run_digits_in_process(tmp_path, "--max_steps", "3") == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert run_digits_in_process(tmp_path, "--max_steps", "3", "--overwrite_output_dir", "true") == 0
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 3


class LinearOnX(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x)


def _fit_toy(tmp_path, features):
    """Fit a linear classifier on toy data whose features are given (NaN allowed)."""
    config = TrainingConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2,
                            logging_steps=2, mixed_precision="no")
    data = Dataset.from_dict({"x": features, "labels": [i % 2 for i in range(len(features))]}).with_format("torch")
    return fit_model(config, LinearOnX, data, data, ["a", "b"])[1]


def test_nan_loss_stops_the_run_with_a_clear_message(tmp_path, capsys):
    features = [[float(i), 1.0] for i in range(16)]
    features[9] = [float("nan"), 1.0]
    with pytest.raises(NonFiniteLossError, match="NaN or inf"):
        _fit_toy(tmp_path, features)
    assert run_main(lambda: _fit_toy(tmp_path / "again", features)) == EXIT_DIVERGED  # not 2: bad input
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the training loss was NaN or inf in the steps up to step")
    assert not (tmp_path / "summary.json").exists()


def test_finite_toy_run_finishes(tmp_path):
    result = _fit_toy(tmp_path, [[float(i % 2), 1.0] for i in range(16)])
    assert result.summary["optimizer_steps"] == 8


def test_skipped_loss_scaled_steps_do_not_advance_the_schedule(tmp_path):
    # fp16 itself needs CUDA (see test_gpu.py); torch's CPU GradScaler runs the same skip-and-back-off
    # logic, so the loop's handling of a skipped step is checked on every machine with it.
    from recipes import digits

    config = digits.DigitsConfig(output_dir=str(tmp_path), max_steps=12, warmup_ratio=0.0, logging_steps=1,
                                 mixed_precision="no")
    train_set, test_set, names = digits.load_splits(config)
    calls = {"n": 0}

    def inf_on_backward_5_and_9(grad):
        if grad.device.type == "meta":  # the runner's FLOP count builds a meta copy of the model
            return grad
        calls["n"] += 1
        return grad * float("inf") if calls["n"] in (5, 9) else grad

    def make_model():
        model = digits.DigitsCNN(config.channels, len(names), config.dropout)
        model.head[-1].weight.register_hook(inf_on_backward_5_and_9)
        return model

    def cpu_scaler(accelerator):
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)

    _, result = fit_model(config, make_model, train_set, test_set, names, setup=cpu_scaler)
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    assert result.summary["skipped_fp16_steps"] == 2
    assert [i for i in range(11) if lrs[i] == lrs[i + 1]] == [4, 8]  # steps 5 and 9 left the lr where it was
    assert lrs[-1] == pytest.approx(config.learning_rate * (1 - 9 / 12))  # 9 applied steps before step 12
