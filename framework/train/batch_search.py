"""Automatic micro-batching: the largest micro-batch that fits, with the effective batch kept.

The search is a bisection between the largest size that ran and the smallest
that ran out of memory, so it needs O(log n) tries. Every try runs several
forward/backward passes (a size that fits once may not fit on the next step
once the caching allocator is fragmented), frees cached memory afterwards, and
is agreed across processes: a size fits only if it fits on every rank, so all
ranks settle on the same, smallest, answer. Accumulation then follows from the
effective batch; exact sample weighting makes an uneven last micro-batch harmless.
The loop probes with n copies of the longest sample (`data.largest_sample_index`),
the largest batch of n that padding to the longest can produce.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from accelerate import Accelerator

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError

CONFIRM_STEPS = 3


@dataclass
class SearchResult:
    """The chosen micro-batch and every (size, fitted) try, in order."""

    micro_batch: int
    tries: list[tuple[int, bool]] = field(default_factory=list)


def largest_fitting(fits: Callable[[int], bool], start: int, what: str = "micro-batch") -> SearchResult:
    """The largest n in 1..start for which `fits(n)` holds, assuming fitting is monotone in n.

    Tries `start` first (often it fits and there is nothing to search), then
    bisects. Raises UserError when even 1 does not fit.
    """
    tries: list[tuple[int, bool]] = []

    def attempt(n: int) -> bool:
        ok = fits(n)
        tries.append((n, ok))
        return ok

    if attempt(start):
        return SearchResult(start, tries)
    ran, failed = 0, start  # largest size that ran (0: none yet), smallest that failed
    while failed - ran > 1:
        middle = (ran + failed) // 2
        if attempt(middle):
            ran = middle
        else:
            failed = middle
    if ran == 0:
        raise FlagError("auto_find_batch_size", f": even a {what} of 1 runs out of memory")
    return SearchResult(ran, tries)


def free_memory(optimizer: Any = None) -> None:
    """Drop gradients and cached allocator blocks after an out-of-memory error."""
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def state_buffers_per_parameter(optimizer: Any) -> int:
    """Parameter-sized buffers the optimizer will keep: AdamW's two moments, SGD's momentum buffer (if any)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if isinstance(inner, torch.optim.SGD):
        return 1 if inner.defaults["momentum"] else 0
    return 2


def _optimizer_state_reserve(model: torch.nn.Module, optimizer: Any) -> Any:
    """Hold the memory the optimizer's state buffers will take, if they do not exist yet."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if any(inner.state.values()):
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params or params[0].device.type != "cuda":
        return None
    floats = state_buffers_per_parameter(optimizer) * sum(p.numel() for p in params)
    return torch.empty(floats, dtype=torch.float32, device=params[0].device)


def probe_micro_batch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any,
                      make_batch: Callable[[int], dict[str, Any]],
                      step: Callable[[dict[str, Any]], torch.Tensor]) -> Callable[[int], bool]:
    """A `fits(n)` for `largest_fitting`: CONFIRM_STEPS forward/backward passes of n samples on every rank.

    `step(batch)` returns the loss to back-propagate. No optimizer step is
    taken and gradients are dropped afterwards, so the model is unchanged.
    """
    def fits(n: int) -> bool:
        reserve = _optimizer_state_reserve(model, optimizer)
        ok = True
        try:
            batch = make_batch(n)
            for _ in range(CONFIRM_STEPS):
                with accelerator.no_sync(model):
                    accelerator.backward(step(batch))
                optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            ok = False
        del reserve
        free_memory(optimizer)
        return _fits_everywhere(accelerator, ok)

    return fits


def probe_eval_batch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any,
                     make_batch: Callable[[int], dict[str, Any]],
                     forward: Callable[[dict[str, Any]], torch.Tensor]) -> Callable[[int], bool]:
    """A `fits(n)` for evaluation: CONFIRM_STEPS forward passes of n samples in eval mode, without gradients.

    Evaluation runs mid-training, so the room the optimizer state will take is held meanwhile.
    """
    def fits(n: int) -> bool:
        reserve = _optimizer_state_reserve(model, optimizer)
        was_training = model.training
        model.eval()
        ok = True
        try:
            batch = make_batch(n)
            with torch.no_grad():
                for _ in range(CONFIRM_STEPS):
                    forward(batch)
        except torch.OutOfMemoryError:
            ok = False
        model.train(was_training)
        del reserve
        free_memory()
        return _fits_everywhere(accelerator, ok)

    return fits


def _fits_everywhere(accelerator: Accelerator, ok: bool) -> bool:
    # A size fits only where it fits on every process: the minimum over ranks. torch's MIN, not
    # Accelerate's reduce: before accelerate 1.14 any reduction other than "mean" was a sum.
    flag = torch.tensor(1 if ok else 0, dtype=torch.int32, device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


# The loop's side of the search: probes built from the run's own data, model and optimizer.

def _search_micro_batch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, train_data: Any,
                        loss_fn: Callable) -> tuple[int, list[tuple[int, bool]]]:
    """Search the micro-batch on copies of the longest training sample; the RNG streams are left as they were."""
    from framework.core.rng import capture_rng_state, restore_rng_state
    from framework.data.loaders import largest_sample_index, to_device
    from framework.evaluate.evaluation import split_batch

    plan = train_data.plan
    largest = largest_sample_index(train_data.loader.dataset.dataset)

    def make_batch(n: int) -> dict[str, Any]:  # the worst case: n copies of the longest sample
        return to_device(train_data.collated([(largest, 1.0)] * n), accelerator.device)

    def step(batch: dict[str, Any]) -> torch.Tensor:
        inputs, labels = split_batch(batch)
        return loss_fn(model(**inputs).float(), labels).mean()

    start = min(plan.micro_batch, math.ceil(plan.effective_batch / plan.num_processes))
    rng = capture_rng_state()
    model.train()
    result = largest_fitting(probe_micro_batch(accelerator, model, optimizer, make_batch, step), start)
    restore_rng_state(rng)
    return result.micro_batch, result.tries


def _search_eval_batch(accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, eval_loader: Any,
                       limit: int) -> tuple[int, list[tuple[int, bool]]]:
    """The largest evaluation forward batch (up to `limit`) that fits beside training."""
    from framework.core.rng import capture_rng_state, restore_rng_state
    from framework.data.loaders import largest_sample_index, to_device
    from framework.evaluate.evaluation import split_batch

    samples, collate = eval_loader.dataset, eval_loader.collate_fn
    largest = largest_sample_index(samples)

    def make_batch(n: int) -> dict[str, Any]:
        return to_device(collate([samples[largest]] * n), accelerator.device)

    def forward(batch: dict[str, Any]) -> torch.Tensor:
        return model(**split_batch(batch)[0])

    rng = capture_rng_state()
    fits = probe_eval_batch(accelerator, model, optimizer, make_batch, forward)
    result = largest_fitting(fits, limit, what="evaluation batch")
    restore_rng_state(rng)
    return result.micro_batch, result.tries


def _describe_tries(tries: list[tuple[int, bool]]) -> str:
    return ", ".join(f"{n} {'fits' if ok else 'out of memory'}" for n, ok in tries) or "reused from checkpoint"


def choose_batch_sizes(accelerator: Accelerator, config: TrainingConfig, model: torch.nn.Module, optimizer: Any,
                       train_data: Any, eval_loader: Any, loss_fn: Callable, state: Any) -> None:
    """--auto_find_batch_size: search (or reuse from the checkpoint in `state`) the micro-batch and the
    evaluation batch; re-cut the training windows into the chosen micro-batch and say what was chosen."""
    from framework.core.runtime import say

    tries: list[tuple[int, bool]] = []
    if not state.micro_batch:
        state.micro_batch, tries = _search_micro_batch(accelerator, model, optimizer, train_data, loss_fn)
    train_data.use_micro_batch(state.micro_batch)
    plan = train_data.plan
    say(accelerator, f"auto batch size: micro-batch {plan.micro_batch} x {plan.accumulation} accumulation x "
                     f"{plan.num_processes} processes keeps the effective batch {plan.effective_batch} "
                     f"(tried: {_describe_tries(tries)})")
    tries = []
    if not state.eval_batch:
        state.eval_batch, tries = _search_eval_batch(accelerator, model, optimizer, eval_loader,
                                                     config.per_device_eval_batch_size)
    say(accelerator, f"auto batch size: evaluation runs {state.eval_batch} samples per forward pass "
                     f"(tried: {_describe_tries(tries)})")
