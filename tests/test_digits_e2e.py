"""End to end: the digits recipe under real launchers (accelerate launch, torchrun, python)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import (
    CONFIGS,
    DIGITS,
    accelerate_launch,
    assert_same_report,
    launch,
    max_abs_diff,
    read_json,
    read_metrics,
    run_digits_in_process,
    train_lr_pairs,
)

TEST_SET_SIZE = 360  # 20% of 1797, stratified


def _check_outputs(out: Path, world_size: int) -> dict:
    for name in ("report.json", "summary.json", "metrics.jsonl", "model.safetensors", "config.yaml"):
        assert (out / name).is_file(), name
    summary = read_json(out / "summary.json")
    report = read_json(out / "report.json")
    assert summary["world_size"] == world_size
    assert report["macro avg"]["support"] == TEST_SET_SIZE  # every test sample counted once
    assert sum(report[str(d)]["support"] for d in range(10)) == TEST_SET_SIZE
    records = read_metrics(out)
    assert all({"step", "epoch", "loss", "lr"} <= r.keys() for r in records if "loss" in r)
    assert all({"step", "eval_accuracy", "eval_loss"} <= r.keys() for r in records if "eval_loss" in r)
    return summary


@pytest.mark.slow
def test_cpu_yaml_default_run(tmp_path):
    result = accelerate_launch("cpu.yaml", DIGITS, "--output_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _check_outputs(tmp_path, 1)
    assert read_json(tmp_path / "report.json")["accuracy"] >= 0.95
    assert summary["mixed_precision"] == "no" and summary["effective_batch_size"] == 32
    assert result.stdout.count("weighted avg") == 1  # one classification report
    assert "32 micro-batch x 1 accumulation x 1 processes = 32 samples per optimizer step" in result.stdout


@pytest.mark.slow
def test_cpu_2proc_yaml_one_group_one_set_of_bars_and_the_model_of_one_process(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    result = accelerate_launch("cpu_2proc.yaml", DIGITS, "--output_dir", str(two))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _check_outputs(two, 2)
    assert summary["effective_batch_size"] == 64
    assert read_json(two / "report.json")["accuracy"] >= 0.95
    # The launch trains the model one process trains on the same global batch (1 x 64; default dropout on):
    # weights within 5e-5, the same schedule and the same report.
    assert run_digits_in_process(one, "--per_device_train_batch_size", "64") == 0
    assert max_abs_diff(one, two) <= 5e-5
    assert train_lr_pairs(one) == train_lr_pairs(two)
    assert_same_report(read_json(one / "report.json"), read_json(two / "report.json"))
    assert result.stdout.count("weighted avg") == 1
    assert result.stdout.count("processes       :") == 1  # one banner
    # stderr is not a terminal here: plain lines, no carriage returns, and bars from one process only
    assert "\r" not in result.stderr
    finished_bars = [line for line in result.stderr.splitlines() if line.startswith("train epoch 10: 100%")]
    assert len(finished_bars) == 1, result.stderr
    assert len(result.stderr.splitlines()) < 40


@pytest.mark.slow
def test_torchrun_forms_one_two_process_group(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = launch([str(torchrun), "--nproc_per_node", "2", str(DIGITS), "--output_dir", str(tmp_path),
                     "--max_steps", "20"])
    assert result.returncode == 0, result.stderr[-3000:]
    _check_outputs(tmp_path, 2)


@pytest.mark.parametrize("args,flag", [
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    (["--mixed_precision", "fp8x"], "--mixed_precision"),
    (["--no_such_flag", "1"], "--no_such_flag"),
])
def test_bad_flags_exit_nonzero_with_one_line(tmp_path, capsys, args, flag):
    if flag == "--per_device_train_batch_size":  # one through a real process: its exit status and stderr
        result = launch([sys.executable, str(DIGITS), "--output_dir", str(tmp_path / "out"), *args], timeout=60)
        code, stderr = result.returncode, result.stderr
    else:  # the others in this process: the same run_main path without the interpreter's start-up
        capsys.readouterr()
        code, stderr = run_digits_in_process(tmp_path / "out", *args), capsys.readouterr().err
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_fp16_on_cpu_says_what_really_runs(tmp_path, capsys):
    capsys.readouterr()
    assert run_digits_in_process(tmp_path, "--mixed_precision", "fp16", "--max_steps", "3") == 0
    stdout = capsys.readouterr().out
    assert "note: fp16 on a CPU runs real float16 autocast and dynamic loss scaling" in stdout
    assert "precision       : fp16 = fp16 autocast + dynamic loss scaling" in stdout
    assert "(asked for" not in stdout
    summary = read_json(tmp_path / "summary.json")
    assert (summary["mixed_precision"], summary["mixed_precision_requested"]) == ("fp16", "fp16")


@pytest.mark.slow  # a 2-process launch
def test_fsdp_version_1_on_a_cpu_is_refused_with_one_line(tmp_path):
    """FSDP version 1 cannot run on a CPU (torch refuses its compute device): one line, not a traceback per rank."""
    config = tmp_path / "fsdp1.yaml"
    config.write_text((CONFIGS / "fsdp.yaml").read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    exe = Path(sys.executable).with_name("accelerate")
    result = launch([str(exe), "launch", "--config_file", str(config), "--num_processes", "2", "--mixed_precision",
                     "no", str(DIGITS), "--output_dir", str(tmp_path / "out")], timeout=120)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "FSDP version 1 does not run on a CPU" in errors[0]  # once, not per rank
    assert "exitcode  : 2" in result.stderr  # every rank exited with the bad-input code
    assert not (tmp_path / "out").exists()
