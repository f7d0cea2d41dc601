"""Per-sample 32-bit keys: a hash of (seed, epoch, the sample's index in the training set).

They key what must not depend on where a sample lands (its micro-batch, process, DataLoader worker, a resume):
KeyedDropout's masks (framework.train.keyed_dropout). The hash is plain integer arithmetic on 32-bit values,
exact on every backend; the loaders hash an epoch's keys at once (framework.data.loaders).
"""

from __future__ import annotations

import numpy as np
import torch

_LOW32 = 0xFFFFFFFF
# An odd 27-bit multiplier: a 32-bit value times it stays below 2**59, so int64
# arithmetic never overflows and every backend computes the same bits.
_MULTIPLIER = 0x45D9F3B


def hash32_(values: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """hash32, in place, of int64 `values` in [0, 2**32) (a tensor on any device, or a NumPy array, int64 or
    uint32: the same operators, the same bits): two rounds of x = (x ^ x >> 16) * 0x45D9F3B mod 2**32, then
    x ^ x >> 16."""
    # In place: on a CPU, allocating a fresh tensor per operation made the mix three times slower.
    shift = torch.bitwise_right_shift if torch.is_tensor(values) else np.right_shift
    shifted = torch.empty_like(values) if torch.is_tensor(values) else np.empty_like(values)
    wraps = not torch.is_tensor(values) and values.dtype == np.uint32  # its product is already mod 2**32
    for _ in range(2):
        values ^= shift(values, 16, out=shifted)
        values *= _MULTIPLIER
        if not wraps:
            values &= _LOW32
    values ^= shift(values, 16, out=shifted)
    return values


def _mix_int(value: int) -> int:
    """hash32 of one Python integer in [0, 2**32)."""
    for _ in range(2):
        value = ((value ^ (value >> 16)) * _MULTIPLIER) & _LOW32
    return value ^ (value >> 16)


def sample_keys(index: np.ndarray | torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
    """Per-sample 32-bit keys (int64, on the host) from the samples' dataset indices, the seed and the epoch:
    hash32(index ^ hash32(hash32(seed) ^ epoch)).

    Computed with NumPy: a micro-batch's few keys cost microseconds there, a dozen small device ops here."""
    start = _mix_int(_mix_int(seed & _LOW32) ^ (epoch & _LOW32))
    index = index.numpy() if torch.is_tensor(index) else np.asarray(index)
    return torch.from_numpy(hash32_((index.astype(np.int64) & _LOW32) ^ start))
