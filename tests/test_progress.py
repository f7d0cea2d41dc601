"""Progress bars: readable plain lines when stderr is not a terminal, nothing when disabled."""

from __future__ import annotations

import io
import re
import sys
import time

import pytest

from framework.core.progress import progress_bar

from helpers import TEXT, launch, read_json


def test_non_terminal_output_is_plain_rate_limited_lines():
    stream = io.StringIO()
    bar = progress_bar(1000, "train", True, stream=stream, log_interval_s=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) <= 3  # start, (maybe one), end: not 1000 refreshes
    assert lines[-1].startswith("train: 100%") and "1000/1000" in lines[-1]


def test_disabled_bar_prints_nothing():
    stream = io.StringIO()
    bar = progress_bar(10, "train", False, stream=stream)
    bar.update(10)
    bar.close()
    assert stream.getvalue() == ""


def test_short_unkept_bar_stays_out_of_logs():
    stream = io.StringIO()
    bar = progress_bar(3, "eval", True, stream=stream, leave=False, log_interval_s=3600)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""


@pytest.mark.slow
def test_preparation_phases_show_in_a_log_and_a_cached_preparation_is_reused(tmp_path, text_files):
    """A run whose stderr is a log file (not a terminal) shows one plain line per refresh of each preparation
    phase, with the count, the rate and the time left, also when two worker processes prepare the training
    split; the same data again (another learning rate) is not prepared again: the tokenizer and the prepared
    splits come from the cache, and no preparation bar shows."""
    env = {"TQDM_MININTERVAL": "0", "HF_DATASETS_CACHE": str(tmp_path / "cache")}  # every refresh; a fresh cache
    args = [sys.executable, str(TEXT), "--train_file", str(text_files / "train.csv"), "--validation_file",
            str(text_files / "valid.csv"), "--max_steps", "2", "--baseline", "false", "--preprocessing_num_workers", "2"]
    started = time.time()
    first = launch([*args, "--output_dir", str(tmp_path / "first")], env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = read_json(tmp_path / "first" / "summary.json")  # the first step: after preparation, within the run
    assert 0 < summary["preparation_time_s"] < summary["time_to_first_step_s"] < time.time() - started
    assert "\r" not in first.stderr and "\x1b" not in first.stderr
    lines = first.stderr.splitlines()
    for phase, unit, total in (("train tokenizer", "row", 600), ("prepare train", "sample", 600),
                               ("prepare eval", "sample", 150)):
        shown = [line for line in lines if line.startswith(f"{phase}:")]
        assert len(shown) >= 2 and f"| {total}/{total} [" in shown[-1], (phase, first.stderr[-3000:])
        assert re.search(rf"\| {total}/{total} \[\d\d:\d\d<\d\d:\d\d, *[\d.]+ ?{unit}/s\]", shown[-1]), shown[-1]
    second = launch([*args, "--output_dir", str(tmp_path / "second"), "--learning_rate", "3"], env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    for phase in ("train tokenizer", "prepare train", "prepare eval"):
        assert phase not in second.stderr, second.stderr[-3000:]
    assert read_json(tmp_path / "second" / "summary.json")["preparation_time_s"] < \
        read_json(tmp_path / "first" / "summary.json")["preparation_time_s"]
