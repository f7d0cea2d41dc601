"""Runs that survive: SIGKILL at random steps then resume to bitwise-identical weights; bad resumes refused."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    CONFIGS,
    DIGITS,
    REPO,
    launch,
    read_json,
    run_and_kill_after,
    run_digits_in_group,
    run_digits_in_process,
    weights,
)

# fp32 with dropout on (so every RNG must be restored), 4 epochs of 45 steps, a checkpoint every 10.
RUN_ARGS = ["--mixed_precision", "no", "--dropout", "0.2", "--num_train_epochs", "4", "--checkpointing_steps", "10",
            "--seed", "11", "--logging_steps", "5"]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def _command(processes: int, out: Path, *extra: str) -> list[str]:
    if processes == 1:
        return [sys.executable, str(DIGITS), "--output_dir", str(out), *RUN_ARGS, *extra]
    return [ACCELERATE, "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"), str(DIGITS),
            "--output_dir", str(out), *RUN_ARGS, *extra]


def _bitwise_equal(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def _run_here(processes: int, out: Path, *extra: str) -> None:
    """The run of `_command` in this process (1) or in a forked 2-process gloo group: the same training without
    a launcher's start-up (the killed runs below are real launches; what they are compared with needs none)."""
    if processes == 1:
        assert run_digits_in_process(out, *RUN_ARGS, *extra) == 0
    else:
        run_digits_in_group(out, *RUN_ARGS, *extra)


@pytest.fixture(scope="module", params=[1, 2], ids=["1proc", "2proc"])
def reference(request, tmp_path_factory):
    """An uninterrupted run, and the number of processes it used."""
    out = tmp_path_factory.mktemp(f"reference{request.param}")
    _run_here(request.param, out)
    return request.param, out


@pytest.mark.slow
def test_killed_runs_resume_bitwise_identical(reference, tmp_path, capfd):
    processes, ref_out = reference
    steps = read_json(ref_out / "summary.json")["optimizer_steps"]
    checkpoints = list(range(10, steps - 20, 10))
    kill_points = sorted(random.Random(processes).sample(checkpoints, 2))
    # One run killed twice: the second launch resumes from the checkpoint the first kill left and is killed after
    # a checkpoint of its own (a resumed run's checkpoints must resume exactly too); the last resume runs to the end.
    out = tmp_path / "killed"
    resume: list[str] = []
    for kill_after in kill_points:
        code = run_and_kill_after(_command(processes, out, *resume), out, kill_after)
        assert code == -signal.SIGKILL or code != 0, f"the run finished before the kill at step {kill_after}"
        assert not (out / "summary.json").exists()
        resume = ["--resume_from_checkpoint", "latest"]
    capfd.readouterr()
    _run_here(processes, out, *resume)
    assert f"resumed from {out / 'checkpoints' / f'step_{kill_points[-1]}'}" in capfd.readouterr().out
    assert read_json(out / "summary.json")["optimizer_steps"] == steps
    assert _bitwise_equal(ref_out, out), f"{processes} process(es), killed after steps {kill_points}"


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, capfd):
    out = tmp_path / "run"
    reference = tmp_path / "reference"
    _run_here(1, reference)
    assert run_and_kill_after(_command(1, out), out, 30) != 0
    latest = max((p for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")),
                 key=lambda p: int(p.name.split("_")[1]))
    # What a kill in the middle of writing the next checkpoint leaves on disk: a half-written temporary
    # folder (never picked up), and, were the rename not atomic, a step folder without state.json.
    next_step = int(latest.name.split("_")[1]) + 10
    partial = out / "checkpoints" / f".tmp_step_{next_step}"
    shutil.copytree(latest, partial)
    (partial / "state.json").unlink()
    (partial / "model.safetensors").write_bytes(b"truncated")
    shutil.copytree(partial, out / "checkpoints" / f"step_{next_step + 10}")
    capfd.readouterr()
    _run_here(1, out, "--resume_from_checkpoint", "latest")
    assert f"resumed from {latest}" in capfd.readouterr().out
    assert _bitwise_equal(reference, out)


@pytest.mark.slow
def test_save_total_limit_keeps_newest(tmp_path):
    result = launch(_command(1, tmp_path, "--save_total_limit", "2", "--max_steps", "50"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_40", "step_50"]
    assert (tmp_path / "checkpoints" / "step_50" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpointed")
    _run_here(1, out, "--max_steps", "20")
    return out


@pytest.mark.parametrize("extra,message", [
    (["--resume_from_checkpoint", "/nonexistent/step_5"], "does not exist"),
    (["--channels", "16", "--resume_from_checkpoint", "latest"], "is for another model: parameter"),
    (["--per_device_train_batch_size", "16", "--resume_from_checkpoint", "latest"],
     "was made with effective_batch=32, this run has effective_batch=16"),
])
def test_bad_resume_is_refused_and_leaves_outputs_untouched(checkpointed_run, tmp_path, extra, message, capsys):
    out = tmp_path / "copy"
    shutil.copytree(checkpointed_run, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run_digits_in_process(out, *RUN_ARGS, *extra) == 2
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_incomplete_checkpoint_path_is_refused(checkpointed_run, tmp_path, capsys):
    broken = tmp_path / "step_10"
    shutil.copytree(checkpointed_run / "checkpoints" / "step_10", broken)
    (broken / "state.json").unlink()
    assert run_digits_in_process(tmp_path / "out", *RUN_ARGS, "--resume_from_checkpoint", str(broken)) == 2
    assert "is incomplete" in capsys.readouterr().err


@pytest.mark.slow
def test_one_rank_failing_stops_the_whole_job(tmp_path):
    started = time.monotonic()
    result = subprocess.run([ACCELERATE, "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
                             str(REPO / "tests" / "scripts" / "rank_failure.py"), "--output_dir", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "simulated failure on rank 1" in result.stderr
    assert "rank" in result.stderr and ": 1" in result.stderr  # the launcher names the failed rank
    assert not (tmp_path / "summary.json").exists()
