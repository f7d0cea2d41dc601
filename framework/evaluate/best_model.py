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
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from framework.core.errors import FlagError
from framework.evaluate.evaluation import ExtraMetrics, Report
from framework.io.files import umask_mode, write_atomic
from framework.io.names import BEST_DIR
from framework.io.weights import WEIGHTS_FILE, load_weights, model_state_dict


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
    load_weights(accelerator, model, load_file(str(folder / WEIGHTS_FILE)))  # every process: FSDP reshards
    errors = record.get("errors")  # a best/ of an older version has none
    report = Report(record["text"], record["metrics"], record["loss"], np.array(record["confusion"]),
                    record["extra"], [tuple(row) for row in errors] if errors is not None else None)
    return report, record["step"]


def check_best_metric(key: str, extra_metrics: Optional[ExtraMetrics], multi_label: bool = False) -> None:
    """Refuse a --metric_for_best_model that no evaluation will produce, before anything runs."""
    from framework.evaluate.evaluation import MULTI_LABEL_METRICS, PROBABILITY_METRICS, Predictions

    if not key:
        return
    names = {"eval_loss", "eval_accuracy", "eval_macro_f1", "eval_weighted_f1",
             *(f"eval_{name}" for name in PROBABILITY_METRICS)}
    if multi_label:  # no calibration error or top-k; micro and samples F1 and the Hamming loss instead
        names -= {"eval_expected_calibration_error", "eval_top_5_accuracy"}
        names |= {f"eval_{name}" for name in MULTI_LABEL_METRICS}
    if extra_metrics is not None:  # the recipe's metric names, from a two-sample, two-class evaluation
        from framework.evaluate.probabilities import summarize

        labels = np.array([0, 1])
        two = Predictions(labels, labels, np.array([0.1, 0.2]), summarize(np.array([[0.9, 0.1], [0.2, 0.8]]),
                                                                          labels, full=True))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                names |= {f"eval_{name}" for name in extra_metrics(two)}
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError):
            # A metric that needs the run's own classes (more than two, a name) cannot run on this two-class sample:
            # its names are known at the first evaluation, which checks the key then. Anything else is a bug in the
            # recipe's metric, and surfaces now.
            return
    if key not in names:
        raise FlagError("metric_for_best_model", f"{key!r} is not an evaluation metric; there are: "
                        f"{', '.join(sorted(names))}")
