"""Files written whole or not at all, readable by teammates: atomic writes, the umask's mode, JSON without NaN."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(path: Path | str) -> None:
    """Give a file the mode the user's umask asks for (0644 under 022); for writers that create 0600
    files (tempfile.mkstemp, safetensors), which teammates on a shared filesystem could not read."""
    os.chmod(path, 0o666 & ~_umask())


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename (mode from the umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; teammates on a shared filesystem must read it
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def read_json_file(path: Path, flag: str, what: str) -> Any:
    """A JSON file the framework wrote and now reads back (a run's calibration.json, thresholds.json), parsed;
    unreadable or invalid JSON is one line naming the file (a `FlagError` for `flag`), and `what` says what the
    file should hold."""
    from framework.core.errors import FlagError

    try:
        return json.loads(Path(path).read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FlagError(flag, f": {str(path)!r} is not valid JSON ({reason}); it should hold {what}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
