"""One run per output_dir (framework.io.run_lock): a second run into a running run's folder is refused with one
line naming the holder, whatever its flags, and nothing of the running run changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.io.run_lock import LOCK_FILE, RunLock

from helpers import DIGITS, REPO, read_metrics, run_digits_in_process


def _start(out: Path, *args: str) -> subprocess.Popen:
    """recipes/digits.py as a process of its own; its stderr goes to a file beside `out` (read with `_stderr`)."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = out.parent / f"stderr_{time.monotonic_ns()}.txt"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, str(DIGITS), "--output_dir", str(out), *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=handle, stdin=subprocess.DEVNULL)
    proc.log = log
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    return proc.log.read_text()


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_the_lock_is_exclusive_released_and_a_dead_holders_file_is_taken_over(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert first.acquire() is None
    holder = second.acquire()  # another open file description: flock refuses it, even in one process
    assert holder is not None and f"process {os.getpid()}" in holder
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 12345, "since": "yesterday"}))
    notes: list[str] = []
    assert second.acquire(note=notes.append) is None  # nobody holds the flock: the file was left by a dead run
    assert len(notes) == 1 and "host elsewhere, process 12345" in notes[0] and "taken over" in notes[0]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()


def test_a_refused_run_removes_the_folder_it_made_to_hold_the_lock(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert run_digits_in_process(out, "--resume_from_checkpoint", str(tmp_path / "nowhere")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_second_run_into_a_running_runs_folder_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    first = _start(out, "--num_train_epochs", "200", "--checkpointing_steps", "20", "--seed", "3")
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_20").exists() and time.monotonic() < deadline:
            assert first.poll() is None, _stderr(first)
            time.sleep(0.05)
        config_before = (out / "config.yaml").read_text()
        # the three at once: each is refused whatever the others do
        seconds = {tuple(flags): _start(out, "--max_steps", "3", "--seed", "7", *flags)
                   for flags in (["--overwrite_output_dir", "true"], ["--resume_from_checkpoint", "auto"], [])}
        for flags, second in seconds.items():
            second.wait(timeout=120)
            err = _stderr(second)
            assert second.returncode == 2, (flags, err)
            assert len(_error_lines(err)) == 1, err
            assert "is in use by another run" in err and f"process {first.pid}," in err, err
            assert first.poll() is None  # the first run goes on
        assert (out / "config.yaml").read_text() == config_before
    finally:
        first.send_signal(signal.SIGTERM)  # the first run checkpoints and stops (exit 4), giving the folder back
        first.wait(timeout=120)
    assert first.returncode == 4
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == sorted(steps)  # only the first run's lines
    assert "seed: 3" in (out / "config.yaml").read_text()
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_runs_the_other_is_refused(tmp_path):
    out = tmp_path / "run"
    runs = [_start(out, "--num_train_epochs", "6", "--seed", str(seed), "--overwrite_output_dir", "true")
            for seed in (1, 2)]
    results = [(run.wait(timeout=300), _stderr(run)) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    refused_err = results[1 - winner][1]
    assert len(_error_lines(refused_err)) == 1 and "is in use by another run" in refused_err, refused_err
    assert f"seed: {winner + 1}" in (out / "config.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())  # the winner finished whole
