"""A full disk while checkpointing or writing outputs: one line, exit code 6, the earlier checkpoints intact, and
the next run resumes (bitwise equal to a run that never hit the fault). The disk is a real small tmpfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from helpers import max_abs_diff, run_digits_in_process

ARGS = ["--max_steps", "40", "--checkpointing_steps", "10", "--seed", "5"]


def _errors(stderr: str) -> list[str]:
    """The lines that are not progress bars (tqdm writes to stderr too)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("train", "eval"))]


@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MB tmpfs: one digits checkpoint (~0.7 MB) fits, the second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_is_one_line_and_the_next_run_resumes_bitwise(small_disk, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert run_digits_in_process(reference, *ARGS) == 0
    out = small_disk / "run"
    capsys.readouterr()
    assert run_digits_in_process(out, *ARGS) == 6
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: writing {out}/checkpoints/.tmp_step_20 failed: No space left on device;")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_10"]  # intact, nothing half-written
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)  # space freed
    assert run_digits_in_process(out, *ARGS, "--resume_from_checkpoint", "auto") == 0
    assert "resumed from" in capsys.readouterr().out
    assert max_abs_diff(out, reference) == 0.0


def test_a_full_disk_while_writing_the_outputs_is_one_line(small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,size=200k", str(small_disk)], check=True)  # less than the weights
    assert run_digits_in_process(small_disk / "run", "--max_steps", "5") == 6
    lines = _errors(capsys.readouterr().err)
    assert len(lines) == 1 and "failed: No space left on device;" in lines[0], lines
    assert not (Path(small_disk) / "run" / "summary.json").exists()  # the run is not marked finished
