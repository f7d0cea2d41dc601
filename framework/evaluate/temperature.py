"""Temperature scaling: one number T that divides the logits so that the probabilities mean what they say.

T is the value that minimises the evaluation split's negative log-likelihood of softmax(logits / T).
It does not change which class is the most probable, so accuracy (and the whole classification report)
is unchanged by construction; log loss and the calibration error change. One evaluation pass sums
each sample's NLL at every T of a log-spaced grid (memory: the grid, not the logits, so any number of
classes and samples), gathered from every process, so every process finds the same T; the minimum is
then refined by a parabola through the grid point and its neighbours.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from framework.io.names import CALIBRATION_FILE

GRID = np.exp(np.linspace(np.log(0.05), np.log(20.0), 241))  # T from 0.05 to 20, 2.5% apart


def nll_at(logits: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """(samples, len(temperatures)): each sample's -log softmax(logits / T)[label] at every T."""
    scaled = logits.float().unsqueeze(1) / temperatures.view(1, -1, 1)  # (samples, T, classes)
    return torch.logsumexp(scaled, dim=-1) - scaled.gather(-1, labels.view(-1, 1, 1).expand(-1, len(temperatures),
                                                                                              1)).squeeze(-1)


def best_temperature(total_nll: np.ndarray, grid: np.ndarray = GRID) -> float:
    """The T of the smallest summed NLL, refined by a parabola in log T through its neighbours."""
    i = int(np.argmin(total_nll))
    if 0 < i < len(grid) - 1:
        x = np.log(grid[i - 1:i + 2])
        a, b, _ = np.polyfit(x, total_nll[i - 1:i + 2], 2)
        if a > 0:
            return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return float(grid[i])


@torch.no_grad()
def fit_temperature(accelerator: Any, model: torch.nn.Module, loader: Any, forward_batch: int = 0) -> float:
    """The temperature that minimises the NLL of `loader`'s samples (each counted once, on any number of
    processes): the same value on every process."""
    from framework.data.loaders import to_device
    from framework.evaluate.evaluation import forward_in_chunks, is_stream_share, split_batch

    was_training = model.training
    model.eval()
    grid = torch.tensor(GRID, dtype=torch.float32, device=accelerator.device)
    total = torch.zeros(len(GRID), dtype=torch.float64, device=accelerator.device)
    streamed = is_stream_share(loader)
    for batch in loader:
        if streamed:
            batch = to_device(batch, accelerator.device)
        inputs, labels = split_batch(batch)
        logits = forward_in_chunks(model, inputs, forward_batch)
        chunk = max(1, 4_000_000 // (len(GRID) * logits.shape[-1]))  # samples x grid x classes at a time: 16 MB
        nll = torch.cat([nll_at(logits[s:s + chunk], labels[s:s + chunk], grid) for s in range(0, len(labels), chunk)])
        # A stream's share is this process's alone; a prepared loader's padding is dropped by gather_for_metrics.
        total += (nll if streamed else accelerator.gather_for_metrics(nll)).double().sum(0)
    if streamed:
        total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return best_temperature(total.cpu().numpy())


CALIBRATION_NUMBERS = ("expected_calibration_error", "log_loss")


def calibrate(context: Any, report: Any) -> tuple[float, Any]:
    """--calibrate: fit the temperature on the context's loader (framework.evaluate.evaluation.EvaluationContext),
    evaluate again with it (the same predictions, calibrated probabilities), say in the report what it changed
    (`temperature`, `before_temperature`) and write calibration.json into the run directory. Returns
    (temperature, the calibrated report)."""
    accelerator = context.accelerator
    temperature = fit_temperature(accelerator, context.model, context.loader, context.forward_batch)
    calibrated = context.evaluate(temperature=temperature)
    before = {name: report.metrics[name] for name in CALIBRATION_NUMBERS}
    after = {name: calibrated.metrics[name] for name in CALIBRATION_NUMBERS}
    calibrated.metrics.update(temperature=temperature, before_temperature=before)
    calibrated.text += (f"{'temperature':>26} {temperature:.4f}: expected calibration error "
                        f"{before['expected_calibration_error']:.4f} -> {after['expected_calibration_error']:.4f}, "
                        f"log loss {before['log_loss']:.4f} -> {after['log_loss']:.4f}\n")
    if accelerator.is_main_process:
        save_temperature(context.folder, temperature, before, after)
    return temperature, calibrated


def save_temperature(folder: Path, temperature: float, before: dict[str, float], after: dict[str, float]) -> None:
    """calibration.json beside the weights: the temperature, and what it changed."""
    from framework.io.files import write_atomic

    write_atomic(folder / CALIBRATION_FILE, json.dumps({"temperature": temperature, "before": before,
                                                        "after": after}, indent=2) + "\n")


def load_temperature(folder: Path, flag: str = "model_path") -> Optional[float]:
    """The temperature a run saved (calibration.json), or None; a file that does not hold a finite number > 0
    under "temperature" is one line naming the file and the value (a FlagError for `flag`)."""
    from framework.core.errors import FlagError
    from framework.io.files import read_json_file

    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    record = read_json_file(path, flag, 'an object with "temperature", a number > 0')
    value = record.get("temperature") if isinstance(record, dict) else record
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise FlagError(flag, f": {str(path)!r} has temperature {value!r}; a temperature is a finite number > 0 "
                        f"(it scales the logits and never changes the predicted class); calibrate the run again "
                        f"or remove the file")
    return float(value)
