"""Sparse gradients: an optimizer step that costs the rows a batch touches, not the size of a table.

A lookup table (`nn.Embedding` / `nn.EmbeddingBag` with `sparse=True`) then gets a sparse
gradient: only the rows the step's samples use. Whether the step may stay sparse is a
question of the math, not of speed:

- plain SGD (no momentum, no weight decay) moves a row only by its gradient, so a sparse
  step gives the same weights as a dense one (up to the order in which a row's
  contributions are summed): rows no sample touched stay exactly as they are in both;
- momentum or weight decay move every row at every step (the momentum buffer decays,
  weight decay shrinks), so their dense step reads and writes the whole table, and a
  sparse gradient would be wrong or slower there;
- NCCL cannot all-reduce sparse tensors (DDP on several GPUs), while gloo (CPU
  processes) and a single process can.

`sparse_updates_apply` says whether those hold for a run; `clip_grad_norm_` clips a mix of
sparse and dense gradients exactly like torch's clipping does for dense ones.
"""

from __future__ import annotations

from typing import Iterable

import torch

from framework.core.config import TrainingConfig


def sparse_updates_apply(config: TrainingConfig) -> bool:
    """True when a table's sparse gradient trains exactly what the dense one would, and the processes can
    all-reduce it: `--optim sgd` with `--momentum 0` and `--weight_decay 0`, and no NCCL process group."""
    plain_sgd = config.optim == "sgd" and config.momentum == 0 and config.weight_decay == 0
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return plain_sgd and not (distributed and torch.distributed.get_backend() == "nccl")


@torch.no_grad()
def clip_grad_norm_(params: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients so that their global L2 norm is at most `max_norm`; returns the norm before.

    The same rule as `torch.nn.utils.clip_grad_norm_` (coefficient max_norm / (norm + 1e-6), capped
    at 1), which rejects sparse gradients: a sparse one is coalesced first, so that a row given
    by several samples counts once with its summed value, and its values are scaled in place.
    """
    params = [p for p in params if p.grad is not None]
    if not any(p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    tensors = []
    for p in params:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            tensors.append(p.grad._values())
        else:
            tensors.append(p.grad)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors]))
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for t in tensors:
        t.mul_(coefficient.to(t.dtype))
    return total
