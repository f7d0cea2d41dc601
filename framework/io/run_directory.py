"""The output directory: config.yaml, metrics.jsonl, report.json, summary.json, model.safetensors.

Every process runs the same checks (so all of them stop on the same bad
input), and only the main process writes. Nothing is created until the run
starts (`RunDirectory.start`, after every input was checked), so a refused run
leaves no trace. JSON and YAML files are written to a temporary name and
renamed, so a reader never sees half a file; files get the user's umask.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from accelerate import Accelerator

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError
from framework.io.files import json_safe, write_atomic
from framework.io.names import (
    CONFIG_FILE,
    ERRORS_FILE,
    METRICS_FILE,
    OUTPUTS_MANIFEST,
    SUMMARY_FILE,
)
from framework.io.names import RUN_OUTPUTS as NAMED_OUTPUTS
from framework.io.run_lock import RunLock

FINISHED_MARKER = SUMMARY_FILE
# What a run leaves in output_dir; --overwrite_output_dir removes these, and what the earlier run's manifest lists
# (its recipe's own files), and nothing else, before a new run.
RUN_OUTPUTS = NAMED_OUTPUTS


class RunDirectory:
    """Owns `output_dir` for one run."""

    def __init__(self, path: str, is_main: bool):
        self.path = Path(path)
        self.is_main = is_main
        # Called with the folder once it is claimed (main process): files a checkpoint needs beside it to be
        # used on its own (labels.json, the tokenizer), written before the first step, so a stopped run has them.
        self.on_start: list[Callable[[Path], None]] = []
        self.recipe_name = ""  # written first into config.yaml (`recipe:`), so --model_path can check it
        self.class_names: list[str] = []  # for errors.csv
        self.label_delimiter = ","  # joins a multi-label sample's labels in errors.csv
        # evaluation indices -> {column: values} that identify those samples in errors.csv (RecipeData.describe_eval)
        self.describe_eval: Optional[Callable[[list[int]], dict[str, list]]] = None
        self._lock: Optional[RunLock] = None
        self._created: list[Path] = []  # folders made to hold the lock (removed again if the run never starts)
        self._started = False
        self._before: set[str] = set()  # what was in the folder when this run started (not this run's)

    @classmethod
    def for_run(cls, config: TrainingConfig, accelerator: Accelerator) -> "RunDirectory":
        """Claim `config.output_dir` for this run: --overwrite_output_dir and --resume_from_checkpoint decide
        whether a finished run there may be continued or replaced (see `claim`)."""
        from framework.io.checkpoint import list_checkpoints

        run_dir = cls(config.output_dir, accelerator.is_main_process)
        run_dir.check_writable()
        run_dir.lock(accelerator)
        try:
            spec = config.resume_from_checkpoint
            # `auto` with nothing to resume is a fresh start, and is refused like one where a run already is.
            resuming = spec is not None and (spec != "auto" or bool(list_checkpoints(config.output_dir)))
            run_dir.claim(overwrite=config.overwrite_output_dir, resuming=resuming)
        except BaseException:
            run_dir.release()
            raise
        return run_dir

    def lock(self, accelerator: Accelerator) -> None:
        """Hold the folder for this run (framework.io.run_lock): the main process takes the lock, every process
        learns whether it got it, and all refuse together with one line naming the holder when another run
        has it. A folder created only to hold the lock is removed again by `release` if the run never starts."""
        outcome: list = [None]
        if self.is_main:
            try:
                missing = [p for p in [self.path, *self.path.parents] if not p.exists()]
                self.path.mkdir(parents=True, exist_ok=True)
                self._created = missing  # deepest first
                self._lock = RunLock(self.path)
                holder = self._lock.acquire(note=lambda line: print(line, flush=True))
                outcome = [("held", holder) if holder else None]
            except OSError as err:
                outcome = [("unwritable", err.strerror or str(err))]
            if outcome[0] is not None:
                self.release()
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list(outcome, from_process=0)
        if outcome[0] is None:
            return
        kind, what = outcome[0]
        if kind == "unwritable":
            raise FlagError("output_dir", f"{str(self.path)!r} is not writable ({what})")
        raise FlagError("output_dir", f"{str(self.path)!r} is in use by another run: {what}; wait for it to end, "
                        f"stop it, or give another --output_dir (nothing of that run was changed)")

    def release(self) -> None:
        """Give the folder back (at the end of the run, or when it is refused); a folder that `lock` created and
        the run never used is removed, so a refused run leaves no trace."""
        if self._lock is not None and self._started:
            try:
                self.record_outputs()
            except OSError:  # a full disk: the manifest of the start stays
                pass
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if not self._started:
            for folder in self._created:
                try:
                    folder.rmdir()  # only if empty
                except OSError:
                    break
        self._created = []

    def check_writable(self) -> None:
        """Raise `FlagError` when output_dir is a file or cannot be created or written."""
        where = str(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise FlagError("output_dir", f"{where!r} exists and is not a directory")
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise FlagError("output_dir", f"{where!r} is not writable ({str(existing)!r} is "
                            f"{'not a directory' if not existing.is_dir() else 'read-only'})")

    def claim(self, *, overwrite: bool, resuming: bool) -> None:
        """Check the directory holds no run this one would clobber; creates nothing.

        Raises `UserError` on an earlier run (finished, or with checkpoints) unless `overwrite` or `resuming`.
        """
        from framework.io.checkpoint import list_checkpoints

        where = str(self.path)
        if overwrite or resuming:
            return
        if (self.path / FINISHED_MARKER).exists():
            raise FlagError("output_dir", f"{where!r} holds a finished run; pass --overwrite_output_dir "
                            f"true to replace it, --resume_from_checkpoint to continue it, or another --output_dir")
        if list_checkpoints(self.path):
            raise FlagError("output_dir", f"{where!r} holds checkpoints of an unfinished run; pass "
                            f"--resume_from_checkpoint auto to continue it, --overwrite_output_dir true to "
                            f"replace it, or another --output_dir")

    def start(self, config: dict[str, Any], *, resume_step: Optional[int] = None) -> None:
        """Create the directory and write the resolved config; drop a stale summary.

        A new run (`resume_step` None) first removes an earlier run's outputs and checkpoints
        (`RUN_OUTPUTS`; `claim` allowed it with --overwrite_output_dir), so nothing of the
        replaced run can be resumed or mixed in. When resuming from step `resume_step`,
        metrics.jsonl keeps only the lines up to that step.
        """
        if not self.is_main:
            return
        self._started = True
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FlagError("output_dir", f"{str(self.path)!r} is not writable ({err.strerror})") from None
        if resume_step is None:
            self._remove_earlier_run()
        self._before = {entry.name for entry in self.path.iterdir()} - set(self._manifest())
        if self.recipe_name:
            config = {"recipe": self.recipe_name, **config}
        write_atomic(self.path / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
        metrics = self.path / METRICS_FILE
        kept = ""
        if resume_step is not None and metrics.exists():
            lines = [line for line in metrics.read_text().splitlines() if line.strip()]
            kept = "".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= resume_step)
        write_atomic(metrics, kept)
        (self.path / FINISHED_MARKER).unlink(missing_ok=True)
        for write in self.on_start:
            write(self.path)
        self.record_outputs()

    def _manifest(self) -> list[str]:
        """The names an earlier run (or this one) listed in OUTPUTS_MANIFEST; none when it is missing or damaged."""
        try:
            names = json.loads((self.path / OUTPUTS_MANIFEST).read_text())
        except (OSError, ValueError):
            return []
        return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")] \
            if isinstance(names, list) else []

    def record_outputs(self) -> None:
        """List in OUTPUTS_MANIFEST what this run put into the folder beyond RUN_OUTPUTS (a recipe's tokenizer, a
        transformers export), so that --overwrite_output_dir removes it too and nothing of a replaced run stays.
        Called when the run starts and when it ends (main process)."""
        if not self.is_main or not self._started:
            return
        made = {entry.name for entry in self.path.iterdir() if not entry.name.startswith(".")} - self._before
        names = sorted(set(self._manifest()) | (made - set(RUN_OUTPUTS)))
        write_atomic(self.path / OUTPUTS_MANIFEST, json.dumps(names) + "\n")

    def _remove_earlier_run(self) -> None:
        """Remove an earlier run's outputs (`RUN_OUTPUTS`) so that none of it is resumed or mixed in.

        All of them are first moved into one hidden folder by renames, which either all succeed or
        are undone: a file that cannot be moved (read-only folder, immutable file) stops the run with
        one line and leaves the earlier run whole. Only then is the hidden folder deleted; if that
        fails, the new run goes on and a note says what is left to delete by hand.
        """
        named = [*RUN_OUTPUTS, *self._manifest()]
        present = [self.path / n for n in dict.fromkeys(named) if (self.path / n).exists() or (self.path / n).is_symlink()]
        if not present:
            return
        trash = Path(tempfile.mkdtemp(dir=self.path, prefix=".replaced_run_"))
        moved: list[Path] = []
        for old in present:
            try:
                os.rename(old, trash / old.name)
            except OSError as err:
                for done in reversed(moved):
                    os.rename(trash / done.name, done)
                trash.rmdir()
                raise FlagError("overwrite_output_dir", f": the earlier run in {str(self.path)!r} cannot be replaced: "
                                f"{old.name} cannot be moved ({err.strerror}); nothing of it was changed") from None
            moved.append(old)
        try:
            shutil.rmtree(trash)
        except OSError as err:
            print(f"note: --overwrite_output_dir: the earlier run was moved aside, but {trash} could not be "
                  f"deleted ({err.strerror}: {err.filename}); delete it by hand", flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to metrics.jsonl."""
        if self.is_main:
            with open(self.path / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(json_safe(record)) + "\n")

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write `name` (e.g. report.json) atomically."""
        if self.is_main:
            write_atomic(self.path / name, json.dumps(json_safe(data), indent=2) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl written so far."""
        text = (self.path / METRICS_FILE).read_text() if self.is_main else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def write_report(self, report: Any, name: str = "report") -> None:
        """`<name>.json` (the report's metrics) and `<name>.txt` (its text), as training, evaluation-only
        and test runs write them; with the report's most confident errors, errors.csv (the evaluation report's)."""
        self.write_json(f"{name}.json", report.metrics)
        self.write_text(f"{name}.txt", report.text)
        if name == "report" and getattr(report, "errors", None) is not None:
            self.write_errors(report)

    def write_errors(self, report: Any) -> None:
        """errors.csv: index (in the evaluation split), the columns `describe_eval` gives for those samples (a
        file, a text), true and predicted class, the predicted class's probability (score) and the true one's."""
        if not self.is_main:
            return
        rows = report.errors
        described = self.describe_eval([row[0] for row in rows]) if self.describe_eval and rows else {}
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["index", *described, "true", "predicted", "score", "true_probability"])
        def shown(ids: Any) -> str:  # a class, or a multi-label sample's label set joined
            if isinstance(ids, (list, tuple)):
                return self.label_delimiter.join(self.class_names[i] for i in ids)
            return self.class_names[ids]

        for k, (index, true, predicted, score, true_probability) in enumerate(rows):
            writer.writerow([index, *(values[k] for values in described.values()), shown(true), shown(predicted),
                             f"{score:.6f}", "" if true_probability != true_probability else f"{true_probability:.6f}"])
        write_atomic(self.path / ERRORS_FILE, buffer.getvalue())

    def write_text(self, name: str, text: str) -> None:
        """Write a text file (e.g. report.txt) atomically."""
        if self.is_main:
            write_atomic(self.path / name, text)
