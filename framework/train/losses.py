"""The classification loss per sample: cross entropy with optional class weights and label smoothing; for
multi-label samples, the sum over labels of each label's binary cross entropy.

The loop weights each sample's loss by 1 / (real samples in its optimizer step), so
a step averages its samples' (class-weighted) losses over their count. torch's
weighted "mean" divides by the sum of the batch's class weights instead, which
changes with how a step is cut into micro-batches; a count keeps accumulation
exact.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from framework.core.errors import FlagError
from framework.data.labels import training_labels
from framework.data.streaming import is_stream

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights_from(spec: str, labels: Optional[np.ndarray], num_classes: int) -> Optional[torch.Tensor]:
    """`--class_weights`: "" (none), "balanced" (n / (classes x count), sklearn's rule) or a comma list."""
    if not spec:
        return None
    if spec == "balanced":
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
        if (counts == 0).any():
            raise FlagError("class_weights", f"balanced: class {int(np.argmin(counts))} has no training sample")
        return torch.tensor(len(labels) / (num_classes * counts), dtype=torch.float32)
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise FlagError("class_weights", f"must be 'balanced' or a comma list of numbers, got {spec!r}") from None
    if len(weights) != num_classes or any(not np.isfinite(w) or w < 0 for w in weights):
        raise FlagError("class_weights", f"needs {num_classes} finite numbers >= 0 (one per class), got {spec!r}")
    return torch.tensor(weights, dtype=torch.float32)


def classification_loss(class_weights: Optional[Sequence[float] | torch.Tensor] = None,
                        label_smoothing: float = 0.0) -> LossFn:
    """A per-sample (reduction="none") cross entropy with these class weights and label smoothing."""
    weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    cache: dict[torch.device, torch.Tensor] = {}

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None
        if weights is not None:
            weight = cache.get(logits.device)
            if weight is None:
                weight = cache[logits.device] = weights.to(logits.device)
        return F.cross_entropy(logits, labels, weight=weight, reduction="none", label_smoothing=label_smoothing)

    return loss


def multi_label_loss() -> LossFn:
    """A per-sample multi-label loss: the sum over labels of the binary cross entropy of each label's logit
    (labels: samples x labels, 1 where present). Summed, so each label learns as its own binary classifier would
    (a mean would divide every label's step by the number of labels); per sample, so the loop's
    1 / (samples in the step) weighting keeps accumulation and N processes exact, as for cross entropy."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none").sum(dim=-1)

    return loss


def default_loss(config: Any, data: Any) -> LossFn:
    """Per-sample cross entropy with --class_weights and --label_smoothing (a Recipe may bring its own); with
    --problem_type multi_label_classification, each sample's binary cross entropy summed over its labels (each
    label learns as its own binary classifier would; framework.train.losses.multi_label_loss)."""
    if config.multi_label:
        return multi_label_loss()
    balanced = config.class_weights == "balanced" and data.train is not None
    if balanced and is_stream(data.train):
        raise FlagError("class_weights", "balanced needs the training labels counted, which a stream does not "
                        "allow before training; give one weight per class as a comma list")
    labels = training_labels(data.train) if balanced else None
    return classification_loss(class_weights_from(config.class_weights, labels, len(data.class_names)),
                               config.label_smoothing)
