"""The output directory: config.yaml, metrics.jsonl, report.json, summary.json, model.safetensors.

Every process runs the same checks (so all of them stop on the same bad
input), and only the main process writes. JSON and YAML files are written to
a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from framework.errors import UserError

FINISHED_MARKER = "summary.json"


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunDirectory:
    """Owns `output_dir` for one run."""

    def __init__(self, path: str, is_main: bool):
        self.path = Path(path)
        self.is_main = is_main

    @classmethod
    def for_run(cls, config: Any, accelerator: Any) -> "RunDirectory":
        """Claim `config.output_dir` for this run: --overwrite_output_dir and --resume_from_checkpoint decide
        whether a finished run there may be continued or replaced (see `claim`)."""
        run_dir = cls(config.output_dir, accelerator.is_main_process)
        run_dir.claim(overwrite=config.overwrite_output_dir, resuming=config.resume_from_checkpoint is not None)
        return run_dir

    def claim(self, *, overwrite: bool, resuming: bool) -> None:
        """Create the directory, check it is writable, and refuse to clobber a finished run.

        Raises `UserError` before anything is written.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--output_dir {str(self.path)!r} exists and is not a directory")
        if (self.path / FINISHED_MARKER).exists() and not (overwrite or resuming):
            raise UserError(f"--output_dir {str(self.path)!r} holds a finished run; pass --overwrite_output_dir "
                            f"true to replace it, --resume_from_checkpoint to continue it, or another --output_dir")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as err:
            raise UserError(f"--output_dir {str(self.path)!r} is not writable ({err.strerror})") from None

    def start(self, config: dict[str, Any], *, resume_step: Optional[int] = None) -> None:
        """Write the resolved config and drop a stale summary; metrics.jsonl starts afresh, or, when
        resuming from step `resume_step`, keeps only the lines up to that step."""
        if not self.is_main:
            return
        write_atomic(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        metrics = self.path / "metrics.jsonl"
        kept = ""
        if resume_step is not None and metrics.exists():
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            kept = "".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= resume_step)
        write_atomic(metrics, kept)
        (self.path / FINISHED_MARKER).unlink(missing_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.is_main:
            with open(self.path / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(_json_safe(record)) + "\n")

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write `name` (e.g. report.json) atomically."""
        if self.is_main:
            write_atomic(self.path / name, json.dumps(_json_safe(data), indent=2) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl written so far."""
        text = (self.path / "metrics.jsonl").read_text() if self.is_main else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def write_text(self, name: str, text: str) -> None:
        """Write a text file (e.g. report.txt) atomically."""
        if self.is_main:
            write_atomic(self.path / name, text)
