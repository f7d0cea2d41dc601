"""Progress bars on the main process only.

On a terminal these are ordinary tqdm bars. When stderr is not a terminal
(cluster logs, CI, `> log.txt 2>&1`), each refresh becomes one plain line and
refreshes are at most one every `log_interval_s` seconds (default 10, or tqdm's own
TQDM_MININTERVAL environment variable), so a log holds a few dozen readable lines
instead of thousands of carriage-return updates.
Nothing here reads a device tensor: the caller passes host numbers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, TextIO

from tqdm import tqdm


class _LineWriter:
    """A file-like wrapper that turns tqdm's carriage-return refreshes into whole lines."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\r", "\n").split("\n"):
            part = part.strip()
            # tqdm clears a line by writing spaces and moves the cursor with escapes; neither is content.
            if part and not part.startswith("\x1b"):
                self.stream.write(part + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_interactive(stream: TextIO) -> bool:
    """Whether `stream` is a terminal that can redraw a bar in place."""
    return hasattr(stream, "isatty") and stream.isatty()


def progress_bar(total: Optional[int], desc: str, enabled: bool, *, initial: int = 0, unit: str = "step",
                 leave: bool = True, log_interval_s: Optional[float] = None, stream: Optional[TextIO] = None) -> tqdm:
    """A tqdm bar, shown only where `enabled` (pass `accelerator.is_local_main_process`); `total` None: a count
    without an end (a stream)."""
    stream = stream or sys.stderr
    if log_interval_s is None:
        log_interval_s = float(os.environ.get("TQDM_MININTERVAL", "10"))
    options: dict[str, Any] = dict(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled,
                                   dynamic_ncols=True)
    if is_interactive(stream):
        options.update(file=stream, leave=leave)
    else:
        # A bar that is not kept (an eval pass) only shows up in a log if it runs longer than the interval.
        options.update(file=_LineWriter(stream), leave=True, mininterval=log_interval_s, ncols=110,
                       ascii=True, delay=0 if leave else log_interval_s)
    return tqdm(**options)
