"""User-facing errors: one line on stderr and a non-zero exit, never a stack trace."""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """A problem with the user's input (flags, files, data), reported as one line."""


class ConfigError(UserError):
    """A bad flag, config file key or value."""


EXIT_USER_ERROR = 2


def run_main(main: Callable[[], object]) -> int:
    """Call a recipe's `main()` and turn a `UserError` into one `error:` line and exit code 2.

    Every process of a multi-process launch reaches the same input errors, so
    only the first process prints them; other exceptions propagate unchanged.
    """
    try:
        main()
    except UserError as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    return 0
