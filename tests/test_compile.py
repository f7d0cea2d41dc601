"""`--torch_compile`: TorchInductor through Accelerate trains the same model, saves plain keys, resumes exactly.

The compiled runs are real subprocesses (the recipe as users run it), so
Dynamo's caches and compile workers never leak into the test process. Dropout is on
(the recipe's default, keyed per sample): compiled, it draws the same masks.
"""

from __future__ import annotations

import contextlib
import sys

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from framework.io.weights import model_state_dict

from helpers import DIGITS, DROPOUT_ARGS, accelerate_launch, launch, max_abs_diff, read_json, run_digits_in_process, weights

# Inductor fuses and reorders float ops, so compiled fp32 is not bitwise eager; 1e-6 is typical here.
TOLERANCE = 5e-5


def run_digits(out, *args: str):
    return launch([sys.executable, str(DIGITS), "--output_dir", str(out), *DROPOUT_ARGS, *args], timeout=300)


@pytest.fixture(scope="module")
def eager_32(tmp_path_factory):
    """1 process, micro-batch 32, eager: the reference."""
    out = tmp_path_factory.mktemp("eager32")
    with open(out.parent / "eager32.stdout", "w+") as printed, contextlib.redirect_stdout(printed):
        assert run_digits_in_process(out, *DROPOUT_ARGS, "--per_device_train_batch_size", "32") == 0
        printed.seek(0)
        assert "torch.compile   : off" in printed.read()
    assert read_json(out / "summary.json")["torch_compile"] is None
    return out


@pytest.mark.slow
def test_compiled_run_matches_eager_saves_plain_keys_and_resumes_exactly(tmp_path, eager_32):
    compiled = tmp_path / "compiled"
    done = run_digits(compiled, "--per_device_train_batch_size", "32", "--torch_compile",
                      "--checkpointing_steps", "45")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.compile   : inductor (mode default)" in done.stdout
    assert read_json(compiled / "summary.json")["torch_compile"] == "inductor (mode default)"
    # Same keys as the eager model (no `_orig_mod.` prefix), in the final weights and in the checkpoint.
    assert weights(compiled).keys() == weights(eager_32).keys()
    assert load_file(str(compiled / "checkpoints" / "step_45" / "model.safetensors")).keys() == \
        weights(eager_32).keys()
    assert max_abs_diff(compiled, eager_32) < TOLERANCE

    resumed = tmp_path / "resumed"
    done = run_digits(resumed, "--per_device_train_batch_size", "32", "--torch_compile",
                      "--resume_from_checkpoint", str(compiled / "checkpoints" / "step_45"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert max_abs_diff(resumed, compiled) == 0.0

    # The checkpoint's plain names also let an eager run pick it up.
    eager_resumed = tmp_path / "eager_resumed"
    assert run_digits_in_process(eager_resumed, *DROPOUT_ARGS, "--per_device_train_batch_size", "32",
                                 "--resume_from_checkpoint", str(compiled / "checkpoints" / "step_45")) == 0
    assert max_abs_diff(eager_resumed, compiled) < TOLERANCE


@pytest.mark.slow
def test_compiled_two_processes_with_accumulation_match_the_big_batch(tmp_path, eager_32):
    out = tmp_path / "2proc"
    done = accelerate_launch("cpu_2proc.yaml", DIGITS, "--output_dir", str(out), *DROPOUT_ARGS, "--torch_compile",
                             "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_json(out / "summary.json")
    assert (summary["world_size"], summary["effective_batch_size"]) == (2, 32)
    assert summary["torch_compile"] == "inductor (mode default)"
    assert max_abs_diff(out, eager_32) < TOLERANCE


@pytest.mark.slow
def test_missing_cpu_compiler_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = launch([sys.executable, str(DIGITS), "--output_dir", str(out), "--torch_compile"],
                  env={"CXX": str(tmp_path / "no-such-g++")})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --torch_compile on a CPU needs a C++ compiler")
    assert "no-such-g++" in lines[0]
    assert not out.exists()


class TiedClassifier(nn.Module):
    """An embedding whose weight the output layer shares, as language-model heads do."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.out = nn.Linear(4, 11, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(self.embed(ids).mean(1))


def test_state_dict_of_a_compiled_model_has_plain_keys_and_saves_tied_weights(tmp_path):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    plain = TiedClassifier()
    compiled = torch.compile(plain)  # nothing is compiled until the first call
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())

    state = model_state_dict(accelerator, compiled)
    assert state.keys() == plain.state_dict().keys()
    save_file(state, str(tmp_path / "m.safetensors"))  # safetensors refuses tensors that share memory
    fresh = TiedClassifier()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")), strict=True)
    assert torch.equal(fresh.embed.weight, plain.embed.weight) and torch.equal(fresh.out.weight, plain.embed.weight)
