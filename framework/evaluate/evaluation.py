"""Evaluation: predictions gathered from every process, scored by sklearn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.metrics import classification_report, confusion_matrix

from framework.core.errors import UserError
from framework.core.progress import progress_bar
from framework.data.loaders import to_device
from framework.data.streaming import StreamingEval, gather_in_stream_order


def is_stream_share(loader: Any) -> bool:
    """Whether `loader` is this process's share of a streamed evaluation split (framework.data.streaming)."""
    return isinstance(loader, StreamingEval)


@dataclass
class Predictions:
    """One entry per evaluation sample, in dataset order, on the host."""

    predictions: np.ndarray
    labels: np.ndarray
    losses: np.ndarray


@dataclass
class Report:
    """sklearn's classification report as text and as a dict, plus the mean evaluation loss."""

    text: str
    metrics: dict[str, Any]
    loss: float
    confusion: np.ndarray  # rows: true class, columns: predicted class
    extra: dict[str, float] = field(default_factory=dict)  # a recipe's own metrics (Recipe.extra_metrics)

    def summary(self) -> dict[str, float]:
        """The headline numbers logged to metrics.jsonl (a recipe's extra metrics as eval_<name>)."""
        return {
            "eval_loss": self.loss,
            "eval_accuracy": self.metrics["accuracy"],
            "eval_macro_f1": self.metrics["macro avg"]["f1-score"],
            "eval_weighted_f1": self.metrics["weighted avg"]["f1-score"],
            **{f"eval_{name}": value for name, value in self.extra.items()},
        }


def split_batch(batch: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """Separate the model inputs from `labels` (and the sampler's `weight`, a stream's sample `index`)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "weight", "index")}
    return inputs, batch["labels"]


def forward_in_chunks(model: torch.nn.Module, inputs: dict[str, Any], chunk: int = 0) -> torch.Tensor:
    """`model(**inputs)`, run `chunk` samples at a time when the batch is larger (0: all at once)."""
    size = next((v.shape[0] for v in inputs.values() if torch.is_tensor(v) and v.dim()), 0)
    if not chunk or size <= chunk:
        return model(**inputs)
    parts = []
    for start in range(0, size, chunk):
        part = {k: v[start:start + chunk] if torch.is_tensor(v) and v.dim() and v.shape[0] == size else v
                for k, v in inputs.items()}
        parts.append(model(**part))
    return torch.cat(parts)


@torch.no_grad()
def predict(accelerator: Accelerator, model: torch.nn.Module, loader: Any,
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], show_progress: bool = True,
            forward_batch: int = 0) -> Predictions:
    """Run `model` over a prepared `loader` and gather predictions, labels and per-sample losses.

    `gather_for_metrics` drops the samples the distributed sampler repeated to
    even out the last batch, so every evaluation sample counts exactly once on
    any number of processes. With `forward_batch`, each loaded batch goes through
    the model that many samples at a time (the size `--auto_find_batch_size` found).
    """
    was_training = model.training
    model.eval()
    streamed = is_stream_share(loader)
    chunks: list[tuple[torch.Tensor, ...]] = []
    bar = progress_bar(None if streamed else len(loader), "eval", show_progress and accelerator.is_main_process,
                       unit="batch", leave=False)
    for batch in loader:
        if streamed:  # this process's share of a stream, on the host: gathered by index after the loop
            batch = to_device(batch, accelerator.device)
        inputs, labels = split_batch(batch)
        logits = forward_in_chunks(model, inputs, forward_batch)
        losses = loss_fn(logits.float(), labels)
        outputs = (logits.argmax(dim=-1), labels, losses)
        chunks.append((*outputs, batch["index"]) if streamed else accelerator.gather_for_metrics(outputs))
        bar.update(1)
    bar.close()
    model.train(was_training)
    if streamed:
        if chunks:
            preds, labels, losses, index = (torch.cat(part).cpu().numpy() for part in zip(*chunks))
        else:  # a process with no sample of the stream (fewer samples than processes)
            preds = labels = index = np.zeros(0, dtype=np.int64)
            losses = np.zeros(0, dtype=np.float32)
        preds, labels, losses = gather_in_stream_order(accelerator, [preds, labels, losses], index)
        if len(labels) == 0:
            raise UserError("the evaluation stream is empty")
        return Predictions(preds, labels, losses)
    preds, labels, losses = (torch.cat(parts).cpu().numpy() for parts in zip(*chunks))
    return Predictions(preds, labels, losses)


ExtraMetrics = Callable[[Predictions], dict]  # gathered predictions -> {name: value}


def build_report(predictions: Predictions, class_names: Sequence[str],
                 extra_metrics: Optional[ExtraMetrics] = None) -> Report:
    """`classification_report` over every class (absent ones score 0, silently), as text and dict, and
    the recipe's `extra_metrics` of the same predictions (in report.json under "extra")."""
    labels = list(range(len(class_names)))
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0, digits=4)
    text = classification_report(predictions.labels, predictions.predictions, **kwargs)
    metrics = classification_report(predictions.labels, predictions.predictions, output_dict=True, **kwargs)
    confusion = confusion_matrix(predictions.labels, predictions.predictions, labels=labels)
    extra = {name: float(value) for name, value in (extra_metrics(predictions) if extra_metrics else {}).items()}
    if extra:
        metrics["extra"] = extra
        text += "".join(f"\n{name:>12} {value:.4f}" for name, value in extra.items()) + "\n"
    return Report(text, metrics, float(predictions.losses.mean()), confusion, extra)


def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: Any, class_names: Sequence[str],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], forward_batch: int = 0,
             extra_metrics: Optional[ExtraMetrics] = None) -> Report:
    """Predict on every process, gather, and build the report (the same on every process)."""
    predictions = predict(accelerator, model, loader, loss_fn, forward_batch=forward_batch)
    return build_report(predictions, class_names, extra_metrics)


@torch.no_grad()
def predict_probabilities(accelerator: Accelerator, model: torch.nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (softmax of the logits) and labels (-1 where unknown) of every sample of a
    prepared `loader`, gathered from every process in dataset order, each sample exactly once."""
    was_training = model.training
    model.eval()
    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
    bar = progress_bar(len(loader), "predict", accelerator.is_main_process, unit="batch", leave=False)
    for batch in loader:
        inputs, labels = split_batch(batch)
        probabilities = torch.softmax(model(**inputs).float(), dim=-1)
        chunks.append(accelerator.gather_for_metrics((probabilities, labels)))
        bar.update(1)
    bar.close()
    model.train(was_training)
    probabilities, labels = (torch.cat(parts).cpu().numpy() for parts in zip(*chunks))
    return probabilities, labels
