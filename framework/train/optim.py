"""Optimizer and learning-rate schedule, planned in optimizer steps."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch.optim.lr_scheduler import LambdaLR

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError

FUSED_ADAMW = ("cuda", "cpu")  # device types whose parameters get the fused AdamW kernel


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    """`--optim` (AdamW, or SGD with momentum) over the trainable parameters; no weight decay on biases and
    norm weights (1-D tensors).

    AdamW uses torch's fused kernel when every parameter is on a CUDA device, or every one on the CPU: one
    kernel over all tensors instead of a dozen tensor-list operations. The same update to float rounding; on a
    CPU a small model's step takes a third of the time (the digits CNN: 280 -> 90 us; bench/RESULTS.md).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optim == "sgd":
        return torch.optim.SGD(groups, lr=config.learning_rate, momentum=config.momentum)
    fused = bool(params) and len({p.device.type for p in params}) == 1 and params[0].device.type in FUSED_ADAMW
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=fused or None)


def total_optimizer_steps(config: TrainingConfig, steps_per_epoch: Optional[int]) -> int:
    """Optimizer steps the run will take: max_steps if set, else epochs x steps per epoch (None: a stream,
    whose epochs are not known in advance, so --max_steps must be set)."""
    if config.max_steps > 0:
        return config.max_steps
    if steps_per_epoch is None:
        raise FlagError("max_steps", "must be set with a streamed training set (its length, and so an epoch's steps, "
                        "is not known before a full pass)")
    return config.num_train_epochs * steps_per_epoch


def warmup_steps_for(config: TrainingConfig, total_steps: int) -> int:
    """Warmup length in optimizer steps: --warmup_steps when > 0, else ceil(--warmup_ratio x total steps)."""
    return config.warmup_steps if config.warmup_steps > 0 else math.ceil(config.warmup_ratio * total_steps)


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak lr for the optimizer step with 0-based index `step`.

    Linear warmup from 0 over `warmup_steps`, then linear or cosine decay to 0
    at `total_steps`, or constant (`constant_with_warmup`). `constant` has no
    warmup at all, as in Hugging Face's schedulers.
    """
    if kind == "constant":
        return 1.0
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant_with_warmup":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR that must be stepped once per applied optimizer step.

    Keep it out of `accelerator.prepare`: a prepared scheduler steps once per
    process per call, so the schedule would run world-size times too fast.
    """
    warmup = warmup_steps_for(config, total_steps)

    def factor(step: int) -> float:
        return lr_factor(step, warmup, total_steps, config.lr_scheduler_type)

    return LambdaLR(optimizer, factor)
