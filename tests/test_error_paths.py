"""What a user sees on bad input under each launcher the README shows (docs/errors.md).

The recipe prints one `error:` line, once per job, and exits 2. A launcher reports a failed child
its own way: Accelerate's single-process launcher adds a CalledProcessError traceback, torch's
elastic agent (multi-process `accelerate launch`, `torchrun`) a ChildFailedError report naming
each rank's exit code; both then exit 1. These tests pin that down whole.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import CONFIGS, DIGITS, launch, run_digits_in_process

BIN = Path(sys.executable).parent
BAD = ["--learning_rate", "-1"]
MESSAGE = "error: --learning_rate must be a finite number > 0, got -1.0"


def _stderr_lines(result) -> list[str]:
    return result.stderr.strip().splitlines()


def test_python_prints_exactly_one_line_and_exits_2(tmp_path):
    result = launch([sys.executable, str(DIGITS), "--output_dir", str(tmp_path / "out"), *BAD], timeout=60)
    assert (result.returncode, _stderr_lines(result)) == (2, [MESSAGE])
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_accelerate_launch_one_process(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # the plain and the quiet launch at once: both end at the flag check
        plain = pool.submit(launch, [str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu.yaml"),
                                     str(DIGITS), "--output_dir", str(tmp_path / "out"), *BAD], 120)
        quiet = pool.submit(launch, [str(BIN / "accelerate"), "launch", "-q", "--config_file",
                                     str(CONFIGS / "cpu.yaml"), str(DIGITS), "--output_dir", str(tmp_path / "out"),
                                     *BAD], 120)
        result, quiet = plain.result(), quiet.result()
    lines = _stderr_lines(result)
    assert result.returncode == 1
    assert [line for line in lines if line.startswith("error:")] == [MESSAGE]
    assert lines.index(MESSAGE) < lines.index("Traceback (most recent call last):")
    assert lines[-1].startswith("subprocess.CalledProcessError") and lines[-1].endswith("non-zero exit status 2.")
    assert quiet.returncode == 1 and _stderr_lines(quiet)[-1] == MESSAGE and "Traceback" not in quiet.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate-2proc", "torchrun"])
def test_multi_process_launchers(tmp_path, launcher):
    start = ([str(BIN / "accelerate"), "launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml")]
             if launcher == "accelerate-2proc" else [str(BIN / "torchrun"), "--nproc_per_node", "2"])
    result = launch([*start, str(DIGITS), "--output_dir", str(tmp_path / "out"), *BAD], timeout=120)
    lines = _stderr_lines(result)
    assert result.returncode == 1
    assert [line for line in lines if line.startswith("error:")] == [MESSAGE]  # once per job, not per rank
    assert lines.index(MESSAGE) < min(i for i, line in enumerate(lines) if "ChildFailedError" in line)
    assert any("exitcode  : 2" in line for line in lines)  # the report names the bad-input code
    assert not (tmp_path / "out").exists()


def test_a_deepspeed_launch_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    # What a DeepSpeed launcher config hands the training process (accelerate's launcher sets this variable;
    # DeepSpeed itself is not installed here, so its launcher cannot be started).
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    capsys.readouterr()
    code = run_digits_in_process(tmp_path / "out")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: DeepSpeed launcher configs are not supported")
    assert "multi_gpu.yaml" in lines[0] and not (tmp_path / "out").exists()


def test_the_library_speaks_python_and_the_command_line_speaks_flags(tmp_path, capsys):
    from framework.core.errors import FlagError, run_main
    from framework.io.checkpoint import resolve_checkpoint

    missing = str(tmp_path / "nope")
    try:
        resolve_checkpoint(missing, tmp_path)
    except FlagError as err:
        assert (err.field, str(err)) == ("resume_from_checkpoint", f"resume_from_checkpoint: {err.problem}")
        assert err.problem.startswith(f"{missing!r} does not exist")
    else:
        raise AssertionError("no FlagError")
    assert run_main(lambda: resolve_checkpoint(missing, tmp_path)) == 2
    assert capsys.readouterr().err == f"error: --resume_from_checkpoint {missing!r} does not exist (give a " \
                                      f"checkpoint folder, 'latest' or 'auto')\n"
