"""The best evaluation so far: kept on disk (for --load_best_model_at_end), and early stopping.

When an evaluation improves the tracked metric (`--metric_for_best_model`; names with
"loss" or "error" in them are minimised, the others maximised), its weights and report go to
`output_dir/best/`; the step, value and the count of evaluations without improvement
live in the train state, so they are checkpointed and survive a resume. An
evaluation whose result is the same on every process (it is gathered) makes every
process take the same decisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from framework.core.errors import FlagError
from framework.evaluate.evaluation import Report
from framework.io.files import umask_mode, write_atomic
from framework.io.names import BEST_DIR
from framework.io.weights import WEIGHTS_FILE, bare_model, model_state_dict


def improves(value: float, best: float | None, key: str, threshold: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `threshold` (lower is better for loss-like metrics)."""
    if best is None:
        return True
    return value < best - threshold if lower_is_better(key) else value > best + threshold


def lower_is_better(key: str) -> bool:
    """Losses and errors (eval_loss, eval_log_loss, eval_expected_calibration_error) are minimised."""
    return "loss" in key or "error" in key


def metric_value(report: Report, key: str) -> float:
    """The tracked metric of an evaluation, or a one-line error naming the metrics there are."""
    summary = report.summary()
    if key not in summary:
        raise FlagError("metric_for_best_model", f"{key!r} is not an evaluation metric; there are: "
                        f"{', '.join(sorted(summary))}")
    return float(summary[key])


def save_best(accelerator: Accelerator, model: torch.nn.Module, report: Report, output_dir: str, step: int,
              key: str) -> None:
    """Write the weights and report of the evaluation at `step` to output_dir/best (call on every process)."""
    state = model_state_dict(accelerator, model)  # a collective under FSDP
    if accelerator.is_main_process:
        folder = Path(output_dir) / BEST_DIR
        folder.mkdir(exist_ok=True)
        tmp = folder / f".tmp_{WEIGHTS_FILE}"
        save_file(state, str(tmp))
        umask_mode(tmp)
        tmp.replace(folder / WEIGHTS_FILE)
        record = {"step": step, "metric": key, "value": metric_value(report, key), "text": report.text,
                  "metrics": report.metrics, "loss": report.loss, "confusion": report.confusion.tolist(),
                  "extra": report.extra, "errors": report.errors}
        write_atomic(folder / "report.json", json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()


def load_best(accelerator: Accelerator, model: torch.nn.Module, output_dir: str) -> tuple[Report, int]:
    """Put the best evaluation's weights into `model`; return its report and step."""
    folder = Path(output_dir) / BEST_DIR
    record = json.loads((folder / "report.json").read_text())
    bare_model(accelerator, model).load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    errors = record.get("errors")  # a best/ of an older version has none
    report = Report(record["text"], record["metrics"], record["loss"], np.array(record["confusion"]),
                    record["extra"], [tuple(row) for row in errors] if errors is not None else None)
    return report, record["step"]
