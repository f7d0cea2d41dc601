"""--gradient_checkpointing: keep fewer activations, recompute them in the backward pass.

A model names its blocks with a `checkpoint_blocks()` method (the recipes' models
do); each block's forward is then run under `torch.utils.checkpoint` (non-reentrant,
RNG state preserved, so dropout draws the same masks when the block is recomputed
and the math does not change). Parameter names stay as they are, so checkpoints and
weights are the same with and without it. A transformers model uses its own
`gradient_checkpointing_enable`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from framework.core.errors import FlagError


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():  # evaluation (no_grad) stores nothing: run as usual
            return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)
        return forward(*args, **kwargs)
    return run


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Checkpoint each of `model.checkpoint_blocks()` (or a transformers model's layers); returns how many."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "gradient_checkpointing_enable"):
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return sum(1 for m in inner.modules() if getattr(m, "gradient_checkpointing", False))
    if not hasattr(model, "checkpoint_blocks"):
        raise FlagError("gradient_checkpointing", f": the model {type(model).__name__} names no blocks to checkpoint "
                        f"(give it a checkpoint_blocks() method)")
    blocks = list(model.checkpoint_blocks())
    for block in blocks:
        block.forward = _checkpointed(block.forward)
    return len(blocks)
