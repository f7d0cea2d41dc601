"""Exactness against an independent reference: a plain PyTorch loop written here, not the framework.

The reference takes one AdamW step per window of E samples on the mean loss over
the window's real samples (the short last window included). The framework,
splitting E into micro-batches, accumulation steps and processes, must land on
the same weights. The only thing shared with the framework is the documented data
order: window k of an epoch is samples [k*E, (k+1)*E) of the permutation
`np.random.default_rng([seed, epoch])` draws.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from safetensors.torch import load_file

from framework import TrainingConfig

from helpers import debug_launch, fit_model

N, FEATURES, CLASSES, EPOCHS, SEED, LR = 70, 10, 3, 3, 13, 0.05


class SmallMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.GELU(), torch.nn.Linear(16, CLASSES))

    def forward(self, x):
        return self.net(x)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return x, y


def _initial_model() -> SmallMLP:
    torch.manual_seed(1)
    return SmallMLP()


def reference_weights(effective_batch: int, class_weights=None, label_smoothing: float = 0.0) -> dict:
    """Plain PyTorch: per window, loss = mean over its real samples of each sample's (class-weighted,
    smoothed) cross entropy, backward, AdamW step."""
    x, y = _data()
    model = _initial_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for epoch in range(EPOCHS):
        order = np.random.default_rng([SEED, epoch]).permutation(N)
        for k in range(math.ceil(N / effective_batch)):
            idx = torch.as_tensor(order[k * effective_batch:(k + 1) * effective_batch])
            weight = None if class_weights is None else torch.tensor(class_weights)
            loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight, reduction="none",
                                   label_smoothing=label_smoothing).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _config(out, micro: int, accumulation: int, **extra) -> TrainingConfig:
    settings = dict(learning_rate=LR, weight_decay=0.0, warmup_steps=0, lr_scheduler_type="constant",
                    max_grad_norm=0.0, mixed_precision="no", logging_steps=1)
    return TrainingConfig(output_dir=str(out), per_device_train_batch_size=micro,
                          gradient_accumulation_steps=accumulation, num_train_epochs=EPOCHS, seed=SEED,
                          **{**settings, **extra})


def _framework_run(out, micro: int, accumulation: int, **extra) -> None:
    x, y = _data()
    data = Dataset.from_dict({"x": x.numpy(), "labels": y.numpy()}).with_format("torch")
    initial = _initial_model()
    fit_model(_config(out, micro, accumulation, **extra), lambda: copy.deepcopy(initial), data, data,
              [str(c) for c in range(CLASSES)])


def _max_diff(out, reference) -> float:
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == reference.keys()
    return max((got[k] - reference[k]).abs().max().item() for k in got)


@pytest.mark.parametrize("micro,accumulation", [(32, 1), (8, 4), (5, 3), (16, 2)])
def test_one_process_matches_the_plain_loop(tmp_path, micro, accumulation):
    # 70 samples: windows of 32, 32 and a short 6 (of 15: 15, 15, 15, 15, 10), every epoch.
    _framework_run(tmp_path, micro, accumulation)
    assert _max_diff(tmp_path, reference_weights(micro * accumulation)) < 2e-6


@pytest.mark.parametrize("micro,accumulation", [(16, 1), (4, 4)])
def test_two_processes_with_a_filler_sample_match_the_plain_loop(tmp_path, micro, accumulation):
    # E = micro x accumulation x 2 = 32. The short last window holds 6 samples: with micro 16 they all
    # go to process 0 and process 1 gets only a zero-weight filler; with 4 x 4, process 1 gets 2 real
    # samples. The filler must not count, and each sample weighs 1/6 in that step.
    debug_launch(_framework_run, tmp_path, micro, accumulation)
    assert _max_diff(tmp_path, reference_weights(micro * accumulation * 2)) < 2e-6


@pytest.mark.parametrize("micro,accumulation", [(32, 1), (8, 4)])
def test_class_weights_and_label_smoothing_match_the_plain_loop(tmp_path, micro, accumulation):
    weights, smoothing = [0.5, 2.0, 1.25], 0.1
    _framework_run(tmp_path, micro, accumulation, class_weights="0.5,2.0,1.25", label_smoothing=smoothing)
    assert _max_diff(tmp_path, reference_weights(micro * accumulation, weights, smoothing)) < 2e-6


def sgd_reference_weights(effective_batch: int, momentum: float, weight_decay: float) -> dict:
    """Plain PyTorch with SGD written out: g = grad + weight_decay * w (weight matrices only), buf = momentum *
    buf + g (buf = g at the first step), w -= lr * buf."""
    x, y = _data()
    model = _initial_model()
    buffers: dict = {}
    for epoch in range(EPOCHS):
        order = np.random.default_rng([SEED, epoch]).permutation(N)
        for k in range(math.ceil(N / effective_batch)):
            idx = torch.as_tensor(order[k * effective_batch:(k + 1) * effective_batch])
            model.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    g = p.grad + (weight_decay * p if p.ndim >= 2 else 0.0)
                    buffers[name] = g.clone() if name not in buffers else momentum * buffers[name] + g
                    p -= LR * buffers[name]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("micro,accumulation", [(32, 1), (8, 4)])
def test_sgd_with_momentum_matches_the_plain_loop(tmp_path, micro, accumulation):
    _framework_run(tmp_path, micro, accumulation, optim="sgd", momentum=0.8, weight_decay=0.01)
    reference = sgd_reference_weights(micro * accumulation, 0.8, 0.01)
    assert _max_diff(tmp_path, reference) < 2e-6
    assert _max_diff(tmp_path, sgd_reference_weights(micro * accumulation, 0.0, 0.01)) > 1e-3  # momentum matters


def _label_sets() -> torch.Tensor:
    """N x CLASSES indicator rows, one to three labels per sample."""
    g = torch.Generator().manual_seed(2)
    sets = (torch.rand(N, CLASSES, generator=g) < 0.4).to(torch.int8)
    sets[sets.sum(1) == 0, 0] = 1
    return sets


def multi_label_reference_weights(effective_batch: int) -> dict:
    """Plain PyTorch multi-label: per window, loss = mean over its real samples of each sample's binary cross
    entropy summed over its labels, backward, AdamW step."""
    x, sets = _data()[0], _label_sets()
    model = _initial_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for epoch in range(EPOCHS):
        order = np.random.default_rng([SEED, epoch]).permutation(N)
        for k in range(math.ceil(N / effective_batch)):
            idx = torch.as_tensor(order[k * effective_batch:(k + 1) * effective_batch])
            loss = F.binary_cross_entropy_with_logits(model(x[idx]), sets[idx].float(), reduction="none").sum(1)
            optimizer.zero_grad()
            loss.mean().backward()
            optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _multi_label_run(out, micro: int, accumulation: int) -> None:
    x, sets = _data()[0], _label_sets()
    data = Dataset.from_dict({"x": x.numpy(), "labels": sets.numpy()}).with_format("torch")
    initial = _initial_model()
    fit_model(_config(out, micro, accumulation, problem_type="multi_label_classification"),
              lambda: copy.deepcopy(initial), data, data, [f"tag{c}" for c in range(CLASSES)])


@pytest.mark.parametrize("micro,accumulation", [(32, 1), (8, 4)])
def test_multi_label_matches_the_plain_loop(tmp_path, micro, accumulation):
    _multi_label_run(tmp_path, micro, accumulation)
    assert _max_diff(tmp_path, multi_label_reference_weights(32)) < 2e-6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["micro avg"]["support"] == int(_label_sets().sum())  # every label of every sample, once


def test_multi_label_on_two_processes_matches_the_plain_loop(tmp_path):
    debug_launch(_multi_label_run, tmp_path, 4, 4)
    assert _max_diff(tmp_path, multi_label_reference_weights(32)) < 2e-6
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["micro avg"]["support"] == int(_label_sets().sum())
