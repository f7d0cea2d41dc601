"""Exact accumulation: the same effective batch gives the same model, however it is split.

fp32, the digits CNN's default dropout (0.1, keyed per sample), 2 epochs (a short
window falls mid-run), final weights compared by max |difference| <= 5e-5. Exact
weighting lands near 1e-6 here; dividing by N (plain `accelerator.accumulate`) lands
near 1e-4 and above, and torch's own dropout (masks drawn per micro-batch) near 1e-2,
so the bound tells them apart (the contrast tests below prove it on the same data).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import default_collate

from framework.data.loaders import WindowPlan
from framework.train.keyed_dropout import assign_layer_keys, keyed_samples, sample_keys
from framework.train.optim import build_optimizer, build_scheduler, total_optimizer_steps

from helpers import (
    DROPOUT_ARGS,
    EXACT_ARGS,
    assert_same_report,
    max_abs_diff,
    read_json,
    run_digits_in_group,
    run_digits_in_process,
    train_lr_pairs,
    weights,
)

TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def reference_32(tmp_path_factory):
    """1 process, micro-batch 32, no accumulation: the big-batch reference (checkpointed at step 20)."""
    out = tmp_path_factory.mktemp("ref32")
    assert run_digits_in_process(out, *DROPOUT_ARGS, "--per_device_train_batch_size", "32",
                                 "--checkpointing_steps", "20") == 0
    assert read_json(out / "summary.json")["keyed_dropout_layers"] == 1
    return out


@pytest.mark.parametrize("micro,accum,big", [(8, 4, 32), pytest.param(5, 3, 15, marks=pytest.mark.slow)])
def test_one_process_accumulation_equals_big_batch(tmp_path, reference_32, micro, accum, big):
    reference = reference_32
    if big != 32:
        reference = tmp_path / "big"
        assert run_digits_in_process(reference, *DROPOUT_ARGS, "--per_device_train_batch_size", str(big)) == 0
    split = tmp_path / "split"
    assert run_digits_in_process(split, *DROPOUT_ARGS, "--per_device_train_batch_size", str(micro),
                                 "--gradient_accumulation_steps", str(accum)) == 0
    assert max_abs_diff(reference, split) <= TOLERANCE
    assert train_lr_pairs(split) == train_lr_pairs(reference)
    summary = read_json(split / "summary.json")
    assert summary["effective_batch_size"] == big and summary["optimizer_steps"] == 2 * -(-1437 // big)



def test_two_processes_debug_launcher_equal_one_process(tmp_path, reference_32):
    out = tmp_path / "two"
    run_digits_in_group(out, *DROPOUT_ARGS, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2")
    assert read_json(out / "summary.json")["world_size"] == 2
    assert max_abs_diff(reference_32, out) <= TOLERANCE
    assert train_lr_pairs(out) == train_lr_pairs(reference_32)
    assert_same_report(read_json(out / "report.json"), read_json(reference_32 / "report.json"))


def test_a_one_process_checkpoint_resumed_on_two_processes_ends_the_same(tmp_path, reference_32):
    out = tmp_path / "resumed_on_two"
    shutil.copytree(reference_32 / "checkpoints" / "step_20", out / "checkpoints" / "step_20")
    run_digits_in_group(out, *DROPOUT_ARGS, "--per_device_train_batch_size", "16", "--resume_from_checkpoint", "latest")
    summary = read_json(out / "summary.json")
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 90
    assert max_abs_diff(reference_32, out) <= TOLERANCE


@pytest.mark.slow
def test_contrast_torch_dropout_fails_the_same_tolerance(tmp_path, reference_32, monkeypatch):
    from recipes import digits

    # Masks drawn from each process's random stream. (On one process, 8 x 4 draws the same stream as
    # 32 x 1 in the same order; the processes' split is what torch's dropout cannot follow.)
    monkeypatch.setattr(digits, "KeyedDropout", torch.nn.Dropout)
    one, two = tmp_path / "one", tmp_path / "two"
    run_digits_in_group(two, *DROPOUT_ARGS, "--per_device_train_batch_size", "16")
    assert run_digits_in_process(one, *DROPOUT_ARGS, "--per_device_train_batch_size", "32") == 0
    assert read_json(one / "summary.json")["keyed_dropout_layers"] == 0
    diff = max_abs_diff(one, two)
    assert diff > 20 * TOLERANCE, f"torch's dropout came within {diff:.2e}: the tolerance cannot tell them apart"


def _divide_by_n_weights(micro: int, accum: int) -> dict[str, torch.Tensor]:
    """What a plain Accelerate loop computes on the same data: mean loss per micro-batch, `accumulate()` divides by N.

    Same model init, same micro-batches in the same order, same keyed dropout masks, same optimizer,
    schedule and clipping as the framework; only the loss weighting differs.
    """
    from recipes import digits

    config = digits.DigitsConfig(num_train_epochs=2, seed=7, per_device_train_batch_size=micro,
                                 gradient_accumulation_steps=accum)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accum)
    set_seed(config.seed)
    train_set, _, names = digits.load_splits(config)
    model = digits.DigitsCNN(config.channels, len(names), config.dropout)
    assign_layer_keys(model)
    optimizer = build_optimizer(model, config)
    plan = WindowPlan(len(train_set), micro, accum, seed=config.seed)
    scheduler = build_scheduler(optimizer, config, total_optimizer_steps(config, plan.windows_per_epoch))
    model, optimizer = accelerator.prepare(model, optimizer)
    for epoch in range(config.num_train_epochs):
        for window in plan.windows(epoch):
            for micro_batch in window.micro_batches:
                batch = default_collate([train_set[i] for i, _ in micro_batch])
                keys = sample_keys([i for i, _ in micro_batch], config.seed, epoch)
                with accelerator.accumulate(model), keyed_samples(keys):
                    loss = F.cross_entropy(model(batch["pixel_values"]), batch["labels"])
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}


@pytest.mark.slow
def test_contrast_dividing_by_n_fails_the_same_tolerance(reference_32):
    naive = _divide_by_n_weights(8, 4)
    reference = weights(reference_32)
    diff = max((naive[k] - reference[k]).abs().max().item() for k in reference)
    assert diff > 2 * TOLERANCE, f"dividing by N came within {diff:.2e}: the tolerance cannot tell them apart"


@pytest.mark.slow
def test_class_weighted_accumulation_equals_the_big_batch(tmp_path):
    weighted = ["--class_weights", "balanced", "--label_smoothing", "0.1"]
    big, split = tmp_path / "big", tmp_path / "split"
    assert run_digits_in_process(big, *EXACT_ARGS, *weighted, "--per_device_train_batch_size", "32") == 0
    assert run_digits_in_process(split, *EXACT_ARGS, *weighted, "--per_device_train_batch_size", "8",
                                 "--gradient_accumulation_steps", "4") == 0
    assert max_abs_diff(big, split) <= TOLERANCE
    plain = tmp_path / "plain"  # and the weights change the training at all
    assert run_digits_in_process(plain, *EXACT_ARGS, "--per_device_train_batch_size", "32") == 0
    assert max_abs_diff(big, plain) > 1e-3
