"""Evaluation: predictions gathered from every process, scored by sklearn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from sklearn.metrics import classification_report, confusion_matrix

from framework.core.errors import UserError
from framework.core.progress import progress_bar
from framework.data.loaders import to_device
from framework.data.streaming import StreamingEval, gather_in_stream_order
from framework.evaluate.multi_label import multi_label_report
from framework.evaluate.predictions import (  # noqa: F401  (the types, re-exported: callers import them from here)
    MULTI_LABEL_METRICS,
    PROBABILITY_METRICS,
    Predictions,
    Report,
    decide,
)
from framework.evaluate.probabilities import (
    ClassProbabilities,
    Collector,
    keep_full,
    most_confused,
    probability_metrics,
)


class EvaluationStopped(Exception):
    """Every process agreed to stop (a stop signal) in the middle of an evaluation: it is abandoned."""


def is_stream_share(loader: Any) -> bool:
    """Whether `loader` is this process's share of a streamed evaluation split (framework.data.streaming)."""
    return isinstance(loader, StreamingEval)


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
            forward_batch: int = 0, temperature: float = 1.0, thresholds: Optional[np.ndarray] = None,
            should_stop: Optional[Callable[[], bool]] = None) -> Predictions:
    """Run `model` over a prepared `loader` and gather predictions, labels, per-sample losses and probabilities.

    `gather_for_metrics` drops the samples the distributed sampler repeated to
    even out the last batch, so every evaluation sample counts exactly once on
    any number of processes (a stream's share is gathered by index instead). With
    `forward_batch`, each loaded batch goes through the model that many samples at a
    time (the size `--auto_find_batch_size` found). The probabilities are kept in full
    up to a size, else each sample's most probable classes (framework.evaluate.probabilities); they are
    softmax(logits / `temperature`) (framework.evaluate.temperature; the loss is of the logits as trained).
    Multi-label batches (labels of samples x labels) give each label's sigmoid probability, all of them kept.
    `thresholds` (binary and multi-label, framework.evaluate.thresholds) decide the predictions; without them a
    single-label prediction is the most probable class, a multi-label one every label of probability >= 0.5.
    `should_stop()` is asked once per batch on every process (framework.train.preemption: it must give every
    process the same answer); when it says so, EvaluationStopped is raised (not for a stream's share, whose
    processes may run a batch more or less than each other).
    """
    was_training = model.training
    model.eval()
    streamed = is_stream_share(loader)  # this process's share of a stream: gathered by index after the loop
    size = None if streamed else len(getattr(loader, "dataset", ()) or ()) or None
    collected: Optional[Collector] = None
    index: list[np.ndarray] = []
    bar = progress_bar(None if streamed else len(loader), "eval", show_progress and accelerator.is_main_process,
                       unit="batch", leave=False)
    for batch in loader:
        if streamed:
            batch = to_device(batch, accelerator.device)
            index.append(batch["index"].cpu().numpy())
        inputs, labels = split_batch(batch)
        logits = forward_in_chunks(model, inputs, forward_batch).float()
        if labels.dim() == 2:  # multi-label: every label's probability is kept (the thresholds need them)
            outputs = ((logits >= 0).to(torch.int8), labels, loss_fn(logits, labels), torch.sigmoid(logits))
        else:
            outputs = (logits.argmax(dim=-1), labels, loss_fn(logits, labels),
                       torch.softmax(logits / temperature, dim=-1))
        arrays = [t.cpu().numpy() for t in (outputs if streamed else accelerator.gather_for_metrics(outputs))]
        if collected is None:
            classes = arrays[3].shape[1]
            collected = Collector(size or 1024, classes, labels.dim() == 2 or keep_full(size, classes),
                                  multi_label=labels.dim() == 2)
        collected.add(*arrays)
        bar.update(1)
        if should_stop is not None and not streamed and should_stop():
            bar.close()
            model.train(was_training)
            raise EvaluationStopped()
    bar.close()
    model.train(was_training)
    if streamed:
        return decide(_gathered_stream(accelerator, collected, index), thresholds)
    if collected is None:
        raise UserError("the evaluation set is empty")
    return decide(Predictions(*collected.result()), thresholds)


def _gathered_stream(accelerator: Accelerator, collected: Optional[Collector], index: list[np.ndarray]) -> Predictions:
    """Every process's share of a streamed evaluation, in stream order (each sample once)."""
    # A process may have no sample (fewer than processes): the number of classes comes from the others.
    classes = int(accelerator.gather(torch.tensor([collected.num_classes if collected else 0],
                                                  device=accelerator.device)).max().item())
    collected = collected or Collector(0, classes, keep_full(None, classes))
    preds, labels, losses, kept = collected.result()
    parts = [preds, labels, losses, kept.true, kept.top_classes, kept.top_probabilities]
    parts += [kept.full] if kept.full is not None else []
    gathered = gather_in_stream_order(accelerator, parts, np.concatenate(index) if index else np.zeros(0, np.int64))
    if len(gathered[1]) == 0:
        raise UserError("the evaluation stream is empty")
    return Predictions(*gathered[:3], ClassProbabilities(classes, *gathered[3:6], gathered[6] if len(gathered) > 6
                                                         else None))


ExtraMetrics = Callable[[Predictions], dict]  # gathered predictions -> {name: value}


def build_report(predictions: Predictions, class_names: Sequence[str],
                 extra_metrics: Optional[ExtraMetrics] = None, errors: int = 0) -> Report:
    """`classification_report` over every class (absent ones score 0, silently), as text and dict; with
    probabilities, the metrics they give (framework.evaluate.probabilities) and the most confused class pairs;
    the recipe's `extra_metrics` of the same predictions (in report.json under "extra"); and the `errors`
    wrong predictions made with the most confidence (Report.errors, for errors.csv). Multi-label predictions get
    the multi-label report (framework.evaluate.multi_label)."""
    if predictions.multi_label:
        report = multi_label_report(predictions, class_names, errors)
        return _with_extra(report, predictions, extra_metrics)
    labels = list(range(len(class_names)))
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0, digits=4)
    text = classification_report(predictions.labels, predictions.predictions, **kwargs)
    metrics = classification_report(predictions.labels, predictions.predictions, output_dict=True, **kwargs)
    confusion = confusion_matrix(predictions.labels, predictions.predictions, labels=labels)
    wrong = None
    if predictions.probabilities is not None:
        found = probability_metrics(predictions.probabilities, predictions.labels, predictions.predictions)
        metrics.update(found, most_confused=most_confused(confusion, list(class_names)))
        text += "\n" + "".join(f"{name:>26} {found[name]:.4f}\n" for name in PROBABILITY_METRICS if name in found)
        if found["probabilities_kept"] != "all classes":
            text += f"{'':>26} ({found['probabilities_kept']})\n"
        pairs = ", ".join(f"{c['true']} as {c['predicted']} ({c['count']})" for c in metrics["most_confused"][:3])
        text += f"{'most confused':>26} {pairs or 'none'}\n"
        wrong = _most_confident_errors(predictions, errors) if errors else None
        if predictions.thresholds is not None:
            metrics["decision_thresholds"] = {class_names[1]: float(predictions.thresholds[0])}
            text += f"{'decision threshold':>26} {class_names[1]} from probability {predictions.thresholds[0]:.4f}\n"
    report = Report(text, metrics, float(predictions.losses.mean()), confusion, {}, wrong)
    return _with_extra(report, predictions, extra_metrics)


def _with_extra(report: Report, predictions: Predictions, extra_metrics: Optional[ExtraMetrics]) -> Report:
    """The recipe's own metrics of the same predictions, into the report."""
    extra = {name: float(value) for name, value in (extra_metrics(predictions) if extra_metrics else {}).items()}
    if extra:
        report.metrics["extra"] = extra
        report.text += "".join(f"\n{name:>12} {value:.4f}" for name, value in extra.items()) + "\n"
    report.extra = extra
    return report


def _most_confident_errors(predictions: Predictions, limit: int) -> list[tuple[int, int, int, float, float]]:
    """(index, true class, predicted class, predicted class's probability, true class's probability) of the
    `limit` wrong predictions with the highest probability, highest first."""
    wrong = np.flatnonzero(predictions.predictions != predictions.labels)
    probabilities = predictions.probabilities
    # The predicted class's probability: the most probable one's, unless a threshold decided otherwise.
    predicted = probabilities.confidence if probabilities.full is None else \
        probabilities.full[np.arange(len(predictions.labels)), predictions.predictions]
    order = wrong[np.argsort(-predicted[wrong], kind="stable")][:limit]
    return [(int(i), int(predictions.labels[i]), int(predictions.predictions[i]), float(predicted[i]),
             float(probabilities.true[i])) for i in order]


@dataclass
class EvaluationContext:
    """What an evaluation, the temperature fit and the threshold fit all need: the model on its loader, how to
    score and report, and where the fitted values are written (`folder`: the run directory's path)."""

    accelerator: Accelerator
    model: torch.nn.Module
    loader: Any
    class_names: Sequence[str]
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    folder: Any = None
    multi_label: bool = False
    extra_metrics: Optional[ExtraMetrics] = None
    errors: int = 0  # --save_errors
    forward_batch: int = 0

    def evaluate(self, temperature: float = 1.0, thresholds: Optional[np.ndarray] = None) -> Report:
        """The report of the model on the loader (the same on every process)."""
        return evaluate(self.accelerator, self.model, self.loader, self.class_names, self.loss_fn,
                        forward_batch=self.forward_batch, extra_metrics=self.extra_metrics, errors=self.errors,
                        temperature=temperature, thresholds=thresholds)

    def predict(self, temperature: float = 1.0) -> Predictions:
        """The gathered predictions of the model on the loader."""
        return predict(self.accelerator, self.model, self.loader, self.loss_fn, forward_batch=self.forward_batch,
                       temperature=temperature)


def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: Any, class_names: Sequence[str],
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], forward_batch: int = 0,
             extra_metrics: Optional[ExtraMetrics] = None, errors: int = 0, temperature: float = 1.0,
             thresholds: Optional[np.ndarray] = None, should_stop: Optional[Callable[[], bool]] = None) -> Report:
    """Predict on every process, gather, and build the report (the same on every process); `should_stop`: see
    predict."""
    predictions = predict(accelerator, model, loader, loss_fn, forward_batch=forward_batch, temperature=temperature,
                          thresholds=thresholds, should_stop=should_stop)
    return build_report(predictions, class_names, extra_metrics, errors)


@torch.no_grad()
def predict_probabilities(accelerator: Accelerator, model: torch.nn.Module, loader: Any,
                          temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (softmax of the logits / `temperature`; multi-label: each label's sigmoid) and labels
    (-1 where unknown) of every sample of a prepared `loader`, gathered from every process in dataset order, each
    sample exactly once."""
    was_training = model.training
    model.eval()
    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
    bar = progress_bar(len(loader), "predict", accelerator.is_main_process, unit="batch", leave=False)
    for batch in loader:
        inputs, labels = split_batch(batch)
        logits = model(**inputs).float()
        probabilities = torch.sigmoid(logits) if labels.dim() == 2 else torch.softmax(logits / temperature, dim=-1)
        chunks.append(accelerator.gather_for_metrics((probabilities, labels)))
        bar.update(1)
    bar.close()
    model.train(was_training)
    probabilities, labels = (torch.cat(parts).cpu().numpy() for parts in zip(*chunks))
    return probabilities, labels
