"""Automatic micro-batching: exact largest size in O(log n) tries, agreed across ranks, same math."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from accelerate import Accelerator

from framework.core.config import parse_config
from framework.core.errors import UserError
from framework.train.batch_search import largest_fitting, probe_micro_batch, state_buffers_per_parameter

from helpers import EXACT_ARGS, debug_launch, fit_model, read_json, read_metrics, run_digits_in_process


@pytest.mark.parametrize("start", [1, 7, 64, 100, 1000])
@pytest.mark.parametrize("threshold", [1, 2, 9, 33, 64, 5000])
def test_bisection_finds_exactly_the_largest_size_in_log_tries(start, threshold):
    result = largest_fitting(lambda n: n <= threshold, start)
    assert result.micro_batch == min(start, threshold)
    assert len(result.tries) <= 1 + math.ceil(math.log2(start))
    assert all(ok == (n <= threshold) for n, ok in result.tries)


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(UserError, match="even a micro-batch of 1 runs out of memory"):
        largest_fitting(lambda n: False, 16)


class OOMAbove(torch.nn.Module):
    """A linear classifier that raises CUDA's out-of-memory error for batches above `threshold`."""

    def __init__(self, threshold: int, inner: torch.nn.Module | None = None):
        super().__init__()
        self.threshold = threshold
        self.inner = inner or torch.nn.Linear(4, 3)

    def forward(self, **inputs):
        batch = next(iter(inputs.values())).shape[0]
        if batch > self.threshold:
            raise torch.OutOfMemoryError(f"simulated: batch {batch} > {self.threshold}")
        return self.inner(*inputs.values())


def _probe_with_threshold(threshold: int, start: int):
    accelerator = Accelerator(cpu=True)
    model = OOMAbove(threshold)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def make_batch(n):
        return {"x": torch.randn(n, 4), "labels": torch.zeros(n, dtype=torch.long)}

    def step(batch):
        return torch.nn.functional.cross_entropy(model(x=batch["x"]), batch["labels"])

    result = largest_fitting(probe_micro_batch(accelerator, model, optimizer, make_batch, step), start)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    grads_dropped = all(p.grad is None for p in model.parameters())
    return accelerator, result, unchanged and grads_dropped


def test_real_out_of_memory_errors_are_caught_and_the_model_left_unchanged():
    _, result, clean = _probe_with_threshold(threshold=21, start=256)
    assert result.micro_batch == 21
    assert len(result.tries) <= 1 + 8
    assert clean


def _two_ranks_different_thresholds(out_dir: str) -> None:
    from accelerate import PartialState

    rank = PartialState(cpu=True).process_index
    accelerator, result, _ = _probe_with_threshold(threshold=13 if rank == 0 else 9, start=64)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
        json.dump({"micro": result.micro_batch, "world": accelerator.num_processes}, handle)


def test_two_processes_agree_on_the_smaller_size(tmp_path):
    debug_launch(_two_ranks_different_thresholds, str(tmp_path))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results == [{"micro": 9, "world": 2}, {"micro": 9, "world": 2}]


def _digits_with_oom_above(threshold, config, eval_threshold=None):
    """The digits CNN, raising out-of-memory above `threshold` samples (`eval_threshold` in eval mode)."""
    from recipes import digits

    train_set, test_set, names = digits.load_splits(config)

    class DigitsOOM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = digits.DigitsCNN(config.channels, len(names), config.dropout)

        def forward(self, pixel_values):
            limit = threshold if self.training or eval_threshold is None else eval_threshold
            if pixel_values.shape[0] > limit:
                raise torch.OutOfMemoryError(f"simulated: batch {pixel_values.shape[0]} > {limit}")
            return self.net(pixel_values)

    return DigitsOOM, train_set, test_set, names


@pytest.mark.slow
def test_automatic_split_trains_the_same_weights_as_the_big_batch(tmp_path):
    from recipes import digits

    reference = tmp_path / "reference"
    assert run_digits_in_process(reference, *EXACT_ARGS, "--per_device_train_batch_size", "32") == 0
    config = parse_config(digits.DigitsConfig, [
        "--output_dir", str(tmp_path / "auto"), *EXACT_ARGS, "--per_device_train_batch_size", "32",
        "--auto_find_batch_size", "true", "--total_train_batch_size", "32", "--per_device_eval_batch_size", "8"])
    make_model, train_set, test_set, names = _digits_with_oom_above(12, config)
    _, result = fit_model(config, make_model, train_set, test_set, names)
    summary = result.summary
    assert summary["auto_micro_batch"] == 12
    assert (summary["per_device_train_batch_size"], summary["gradient_accumulation_steps"]) == (12, 3)
    assert summary["effective_batch_size"] == 32
    # The wrapper adds a "net." prefix to every weight name.
    from safetensors.torch import load_file

    auto = {k.removeprefix("net."): v for k, v in load_file(str(tmp_path / "auto" / "model.safetensors")).items()}
    ref = load_file(str(reference / "model.safetensors"))
    assert max((auto[k] - ref[k]).abs().max().item() for k in ref) <= 5e-5


@pytest.mark.slow
def test_resume_reuses_the_chosen_micro_batch(tmp_path, capsys):
    from recipes import digits

    def config_for(*extra):
        return parse_config(digits.DigitsConfig, [
            "--output_dir", str(tmp_path), "--max_steps", "10", "--checkpointing_steps", "5",
            "--auto_find_batch_size", "true", "--per_device_eval_batch_size", "4", *extra])

    config = config_for()
    make_model, train_set, test_set, names = _digits_with_oom_above(20, config)
    assert fit_model(config, make_model, train_set, test_set, names)[1].summary["auto_micro_batch"] == 20
    capsys.readouterr()
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "step_10")
    from helpers import reset_accelerate

    reset_accelerate()
    resumed = config_for("--resume_from_checkpoint", "latest")
    make_model, *_ = _digits_with_oom_above(25, resumed)  # a new search would pick 25
    summary = fit_model(resumed, make_model, train_set, test_set, names)[1].summary
    assert summary["auto_micro_batch"] == 20
    assert "reused from checkpoint" in capsys.readouterr().out
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 10


@pytest.mark.slow
def test_evaluation_batch_is_searched_too_and_gives_the_same_report(tmp_path):
    from recipes import digits

    args = [*EXACT_ARGS, "--max_steps", "20", "--per_device_eval_batch_size", "128"]
    reference = tmp_path / "reference"
    assert run_digits_in_process(reference, *args) == 0

    def config_for(name, *extra):
        return parse_config(digits.DigitsConfig, ["--output_dir", str(tmp_path / name), *args, *extra])

    # Training batches of 32 fit; evaluating more than 20 samples at once runs out of memory.
    plain = config_for("plain")
    make_model, train_set, test_set, names = _digits_with_oom_above(32, plain, eval_threshold=20)
    with pytest.raises(torch.OutOfMemoryError):
        fit_model(plain, make_model, train_set, test_set, names)

    from helpers import reset_accelerate

    reset_accelerate()
    auto = config_for("auto", "--auto_find_batch_size", "true")
    _, result = fit_model(auto, make_model, train_set, test_set, names)
    assert (result.summary["auto_micro_batch"], result.summary["auto_eval_batch"]) == (32, 20)
    expected = read_json(reference / "report.json")
    assert read_json(tmp_path / "auto" / "report.json")["accuracy"] == expected["accuracy"]
    assert result.report.metrics["macro avg"] == pytest.approx(expected["macro avg"])
    eval_losses = [[r["eval_loss"] for r in read_metrics(d) if "eval_loss" in r] for d in (reference, tmp_path / "auto")]
    assert eval_losses[1] == pytest.approx(eval_losses[0], abs=1e-6)


def test_forward_in_chunks_matches_one_forward_pass():
    from framework.evaluate.evaluation import forward_in_chunks

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x = torch.randn(23, 5)
    whole = model(x)
    calls.clear()
    chunked = forward_in_chunks(lambda input, scale: model(input) * scale, {"input": x, "scale": 1.0}, chunk=10)
    assert calls == [10, 10, 3]
    torch.testing.assert_close(chunked, whole)


class TokensOOM(torch.nn.Module):
    """Mean-pooled embeddings; out of memory when a padded batch holds more than `budget` tokens."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        if input_ids.numel() > self.budget:
            raise torch.OutOfMemoryError(f"simulated: {tuple(input_ids.shape)} > {self.budget} tokens")
        mask = attention_mask.unsqueeze(-1).float()
        return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1))


def _variable_length_tokens(size: int, long_every: int):
    """Token sequences of length 4, and of length 40 for every `long_every`-th sample."""
    from datasets import Dataset

    lengths = [40 if i % long_every == long_every - 1 else 4 for i in range(size)]
    rows = {"input_ids": [[1 + (i + j) % 49 for j in range(n)] for i, n in enumerate(lengths)],
            "labels": [i % 2 for i in range(size)]}
    return Dataset.from_dict(rows).with_format("torch")


@pytest.mark.slow
def test_search_probes_the_longest_sequences_so_training_never_runs_out_of_memory(tmp_path):
    from framework.core.config import TrainingConfig

    from text.batches import padder

    # Most batches are short; a few hold a 40-token sequence. 200 tokens fit.
    train_set, eval_set = _variable_length_tokens(240, 37), _variable_length_tokens(60, 29)
    config = TrainingConfig(output_dir=str(tmp_path), per_device_train_batch_size=64,
                            total_train_batch_size=64, per_device_eval_batch_size=64, num_train_epochs=2,
                            auto_find_batch_size=True)
    _, result = fit_model(config, lambda: TokensOOM(200), train_set, eval_set, ["a", "b"], collate_fn=padder(0))
    # 5 x 40 tokens is the largest batch that fits when it holds a long sequence.
    assert (result.summary["auto_micro_batch"], result.summary["auto_eval_batch"]) == (5, 5)
    assert result.summary["gradient_accumulation_steps"] == 13  # ceil(64 / 5)
    assert result.summary["train_samples"] == 2 * 240


def test_largest_sample_index_follows_splits_and_ignores_fixed_shapes():
    from datasets import Dataset

    from framework.data.loaders import largest_sample_index

    data = Dataset.from_dict({"input_ids": [[0] * n for n in (3, 9, 2, 12, 5, 7)], "label": [0] * 6})
    subset = data.select([4, 1, 5, 0])
    assert largest_sample_index(subset) == 1  # sample 1 of the selection: 9 tokens
    split = data.train_test_split(test_size=2, seed=0)["train"]
    lengths = [len(x) for x in split["input_ids"]]
    assert largest_sample_index(split) == lengths.index(max(lengths))
    assert largest_sample_index(torch.utils.data.TensorDataset(torch.zeros(4, 3))) == 0


@pytest.mark.parametrize("make", [lambda p: torch.optim.AdamW(p), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                                  lambda p: torch.optim.SGD(p, lr=0.1)], ids=["adamw", "sgd-momentum", "sgd"])
def test_the_memory_held_for_optimizer_state_is_what_a_step_allocates(make):
    """The search holds room for the optimizer's state before its first step: as many parameter-sized
    buffers as a real step then creates."""
    model = torch.nn.Linear(5, 3)
    optimizer = make(model.parameters())
    expected = state_buffers_per_parameter(optimizer)
    model(torch.randn(4, 5)).sum().backward()
    optimizer.step()
    for p in model.parameters():
        sized = [v for v in optimizer.state[p].values() if torch.is_tensor(v) and v.shape == p.shape]
        assert len(sized) == expected
