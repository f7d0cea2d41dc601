"""Bad input: one `error:` line naming the problem, exit code 2, nothing written or lost."""

from __future__ import annotations

import pytest

from helpers import run_digits_in_process

CASES = [
    (["--no_such_flag", "1"], "unknown flag --no_such_flag"),
    (["--seed", "abc"], "--seed must be an integer, got 'abc'"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be an integer >= 1"),
    (["--per_device_train_batch_size", "-4"], "--per_device_train_batch_size must be an integer >= 1"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be an integer >= 1"),
    (["--max_steps", "-3"], "--max_steps must be -1 (use epochs) or an integer >= 1"),
    (["--num_train_epochs", "-1"], "--num_train_epochs must be an integer >= 1"),
    (["--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate", "-1e-3"], "--learning_rate must be a finite number > 0"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0"),
    (["--optim", "adam"], "--optim must be adamw or sgd, got 'adam'"),
    (["--momentum", "1"], "--momentum must be a number in [0, 1), got 1.0"),
    (["--mixed_precision", "fp8"], "--mixed_precision must be one of no, fp16, bf16"),
    (["--torch_compile_mode", "fast"], "--torch_compile_mode must be one of default, reduce-overhead"),
    (["--checkpointing_steps", "often"], "--checkpointing_steps must be 'no', 'epoch' or an integer >= 1"),
    (["--report_to", "nosuchtracker"], "--report_to must be none, all, or a comma list of"),
    (["--dropout", "1.5"], "--dropout must be a number in [0, 1)"),
    (["--config", "/nonexistent.yaml"], "--config file '/nonexistent.yaml' does not exist"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_flag(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert run_digits_in_process(out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize("content,message", [
    ("learning_rate: [1\n", "is not valid YAML at line"),
    ("learning_rate: 0.01\nbatchsize: 4\n", "unknown key 'batchsize' in --config file"),
    ("seed: 1.5\n", "--seed must be an integer, got 1.5"),
])
def test_bad_config_file(tmp_path, capsys, content, message):
    config = tmp_path / "c.yaml"
    config.write_text(content)
    assert run_digits_in_process(tmp_path / "out", "--config", str(config)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_output_dir_not_writable(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    assert run_digits_in_process(blocker / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "--output_dir" in err and "is not writable" in err
    assert blocker.read_text() == "keep me"


def test_output_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    assert run_digits_in_process(blocker) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "keep me"


def test_resume_without_checkpoints(tmp_path, capsys):
    assert run_digits_in_process(tmp_path, "--resume_from_checkpoint", "latest") == 2
    assert "no complete checkpoint in" in capsys.readouterr().err
