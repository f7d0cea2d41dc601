"""Elastic restarts: `torchrun --max-restarts 1` with one worker SIGKILLed after a periodic checkpoint restarts
the workers, which resume from that checkpoint by themselves and end bitwise equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import DIGITS, REPO, read_json, run_digits_in_group, weights

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ARGS = ["--checkpointing_steps", "20", "--num_train_epochs", "3", "--mixed_precision", "no", "--dropout", "0"]


def _worker_of_rank(launcher: psutil.Process, rank: str):
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == rank and "digits.py" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None



@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_job_ends_as_if_uninterrupted(tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "run"
    run_digits_in_group(reference, *ARGS)  # uninterrupted, in a forked gloo group
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    with open(tmp_path / "run.log", "w") as log:
        proc = subprocess.Popen([TORCHRUN, "--nproc_per_node", "2", "--max-restarts", "1", str(DIGITS), "--output_dir",
                                 str(out), *ARGS, "--resume_from_checkpoint", "auto"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step_20").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _worker_of_rank(psutil.Process(proc.pid), "1")
        assert victim is not None and proc.poll() is None, "the run ended before the kill"
        victim.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=240) == 0, (tmp_path / "run.log").read_text()[-3000:]
    text = (tmp_path / "run.log").read_text()
    assert "failed (exitcode: -9)" in text and f"resumed from {out / 'checkpoints'}" in text
    assert read_json(out / "summary.json")["optimizer_steps"] == read_json(reference / "summary.json")["optimizer_steps"]
    a, b = weights(reference), weights(out)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # bitwise
