"""Progress bars: readable plain lines when stderr is not a terminal, nothing when disabled."""

from __future__ import annotations

import io

from framework.io.progress import progress_bar


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
