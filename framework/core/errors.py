"""How a run ends when it does not finish: one line on stderr and a documented exit code, never a stack trace.

Exit codes (docs/errors.md):
    0  the run finished
    2  bad input: a flag, config file, data file or checkpoint (fix the command)
    3  training diverged: NaN/inf loss, or too many fp16 steps skipped in a row (retry with other settings)
    4  stopped by SIGTERM/SIGUSR1: in training after writing a checkpoint (rerun the same command with
       --resume_from_checkpoint auto to continue); before training with nothing written (rerun it)
    5  another process of the job stalled or died: a collective timed out (--ddp_timeout) or lost its peer
    6  a write failed: the disk or quota is full, or the folder is read-only (earlier checkpoints are intact:
       free space and rerun with --resume_from_checkpoint auto)
"""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable, Optional

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 4
EXIT_PEER_LOST = 5
EXIT_WRITE_FAILED = 6
# errno values of a write that fails for lack of room or permission, not because of the framework's own logic
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class RunStopped(Exception):
    """A run that ends early on purpose; `exit_code` tells a cluster script why."""

    exit_code = 1
    prefix = "error"


class UserError(RunStopped):
    """A problem with the user's input (flags, files, data), reported as one line."""

    exit_code = EXIT_USER_ERROR


class ConfigError(UserError):
    """A bad flag, config file key or value."""


class FlagError(UserError):
    """A problem with the value of one setting, as the library sees it: `field` (the config field) and
    `problem` (what is wrong with the value, and what is allowed).

    In Python it reads `field: problem`; the command line (`run_main`) shows it as the flag the
    user typed: `--field problem`.
    """

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}" if not problem.startswith(":") else f"{field}{problem}")

    def as_flag(self) -> str:
        """The message worded for the command line: `--field problem`."""
        return f"--{self.field}{'' if self.problem.startswith(':') else ' '}{self.problem}"


class TrainingDiverged(RunStopped):
    """Training produced a NaN/inf loss, or too many fp16 steps in a row were skipped."""

    exit_code = EXIT_DIVERGED


class PeerLost(RunStopped):
    """A collective across the job's processes timed out or lost its peer: another process stalled or died."""

    exit_code = EXIT_PEER_LOST


class WriteFailed(RunStopped):
    """Writing a checkpoint or an output failed: no space, a quota, a read-only or forbidden folder."""

    exit_code = EXIT_WRITE_FAILED


def write_failure(err: BaseException) -> Optional[WriteFailed]:
    """The one-line WriteFailed for an exception that is a failed write (an OSError with a disk-full, quota or
    permission errno, or a library's error quoting one, as safetensors' "(os error 28)"), else None."""
    code, where = getattr(err, "errno", None), getattr(err, "filename", None)
    if not isinstance(err, OSError):
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code not in _WRITE_ERRNOS:
        return None
    what = f"writing {where}" if where else "writing the run's files"
    return WriteFailed(f"{what} failed: {os.strerror(code)}; the checkpoints written before are intact: free space "
                       f"(or make the folder writable) and run the same command with --resume_from_checkpoint auto")


class Preempted(RunStopped):
    """A stop signal arrived; every process finished its step and a checkpoint was written."""

    exit_code = EXIT_PREEMPTED
    prefix = "stopped"


def _unwrapped(text: str) -> str:
    """The original message of an error that a DataLoader worker raised: torch re-raises it in the main process
    with the worker's traceback in the message ("Caught UserError in DataLoader worker process 0. Original
    Traceback ..."), whose last line is "module.UserError: <the message>"."""
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def run_main(main: Callable[[], object]) -> int:
    """Call a recipe's `main()` and turn a `RunStopped` into one line on stderr and its exit code.

    Every process of a multi-process launch stops for the same reason at the same
    step (input errors are checked on all processes; divergence and stop signals
    are agreed), so only the first process prints; other exceptions propagate unchanged.
    """
    try:
        main()
    except RunStopped as err:
        if os.environ.get("RANK", "0") == "0":
            text = err.as_flag() if isinstance(err, FlagError) else _unwrapped(str(err))
            print(f"{err.prefix}: {text}", file=sys.stderr, flush=True)
        return err.exit_code
    return 0
