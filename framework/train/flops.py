"""Model FLOPs of a training step, counted once, and what they say about the hardware's use.

`meta_flops_per_sample` builds a second copy of the model on the meta device (no
memory, no real computation), and runs one micro-batch's forward and backward
through it under `torch.utils.flop_counter.FlopCounterMode`, on the main process,
before training: the model being trained, its hooks, its gradients and the RNG
streams are untouched, so training is unchanged. That copy has no gradient
checkpointing, so recomputation is not counted (model FLOPs, as MFU defines them).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peak TFLOP/s per GPU, by (name fragment, precision in effect), from NVIDIA's data sheets:
# H100 SXM / H200: 989 (bf16/fp16 tensor cores), 67 (fp32); H100 PCIe: 756, 51;
# A100: 312, 19.5. Sparsity figures (2x) are not used. Unknown cards get no MFU.
PEAK_TFLOPS = {
    ("H200", "fp16"): 989.0, ("H200", "bf16"): 989.0, ("H200", "no"): 67.0,
    ("H100 PCIe", "fp16"): 756.0, ("H100 PCIe", "bf16"): 756.0, ("H100 PCIe", "no"): 51.0,
    ("H100", "fp16"): 989.0, ("H100", "bf16"): 989.0, ("H100", "no"): 67.0,
    ("A100", "fp16"): 312.0, ("A100", "bf16"): 312.0, ("A100", "no"): 19.5,
}


def training_flops_per_sample(model: torch.nn.Module, batch: dict[str, Any],
                              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Optional[float]:
    """FLOPs of forward + backward for one sample of `batch` (inputs plus `labels`, on the model's device);
    None when even that runs out of memory."""
    from framework.core.rng import capture_rng_state, restore_rng_state
    from framework.evaluate.evaluation import split_batch

    inputs, labels = split_batch(batch)
    rng = capture_rng_state()
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            loss_fn(model(**inputs).float(), labels).sum().backward()
    except torch.OutOfMemoryError:  # the count is a nicety; training decides what fits
        counter = None
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    restore_rng_state(rng)
    return counter.get_total_flops() / len(labels) if counter else None


def meta_flops_per_sample(build_model: Callable[[], torch.nn.Module], batch: dict[str, Any],
                          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Optional[float]:
    """Training FLOPs per sample of the model `build_model()` makes, on `batch`, counted on the meta device;
    None for a model that cannot run there (data-dependent control flow, say)."""
    from framework.core.rng import capture_rng_state, restore_rng_state

    rng = capture_rng_state()
    try:
        with torch.device("meta"):
            model = build_model()
        meta_batch = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()}
        return training_flops_per_sample(model, meta_batch, loss_fn)
    except Exception:  # a nicety: never stop a run for it
        return None
    finally:
        restore_rng_state(rng)


def peak_tflops(device_name: str, precision: str) -> Optional[float]:
    """The card's dense peak TFLOP/s for the precision in effect, or None (CPU, unknown card)."""
    for (fragment, kind), value in PEAK_TFLOPS.items():
        if fragment in device_name and kind == precision:
            return value
    return None
