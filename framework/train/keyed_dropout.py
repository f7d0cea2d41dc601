"""Dropout whose masks are keyed by (seed, epoch, sample index, layer), not drawn from a random stream.

`torch.nn.Dropout` draws its masks from the process's random stream, micro-batch by
micro-batch: the mask a sample gets depends on which micro-batch and which process
it landed in, so 32 x 1, 8 x 4 and 2 processes x 16 train different models, and a
checkpoint resumed on another number of processes continues differently.

`KeyedDropout` gives each element of each sample a keep/drop decision that is a
hash of (seed, epoch, the sample's index in the training set, the layer, the
element's position in the sample). The training loop says which samples a forward
pass holds (`keyed_samples`), so a sample is dropped out the same way whatever
the split into micro-batches and processes, whichever DataLoader worker loaded it,
after a resume, on CPU and CUDA, eager or compiled (the hash is plain integer
arithmetic, exact on every backend).

Outside a training forward pass of the framework's loop (no `keyed_samples`
around it, e.g. a user's own loop) it is ordinary `torch.nn.functional.dropout`.

Positions are counted in the sample's own row-major layout, so padding a
sequence at its end (a longer micro-batch) leaves the other positions' masks
unchanged.
"""

from __future__ import annotations

import zlib
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.data.sample_keys import hash32_, sample_keys  # noqa: F401  (sample_keys: re-exported)


class _Keys:
    """The samples of the forward pass in progress: per-sample 32-bit keys on the device, or None; for keys on the
    CPU, the same as a NumPy uint32 array once a layer has asked for it (one conversion per pass, not per layer)."""

    sample_keys: Optional[torch.Tensor] = None
    host_keys: Optional[np.ndarray] = None

    def on_host(self, keys: torch.Tensor) -> np.ndarray:
        """`keys` (CPU) as uint32, converted once for the keys in force."""
        if keys is not self.sample_keys:  # keys moved by a layer: not the ones in force
            return keys.numpy().astype(np.uint32)
        if self.host_keys is None:
            self.host_keys = keys.numpy().astype(np.uint32)
        return self.host_keys


_CURRENT = _Keys()


class keyed_samples:  # noqa: N801 (used as a function: `with keyed_samples(keys):`)
    """Within this block, `KeyedDropout` layers key their masks by `keys` (`sample_keys`, one per batch row,
    best on the model's device; None: torch's dropout). Wrap forward AND backward: activation checkpointing
    recomputes the forward pass during backward, and must draw the same masks. (A class, not a generator: it is
    entered once per micro-batch.)"""

    def __init__(self, keys: Optional[torch.Tensor]):
        self.keys = keys
        self.previous: tuple = (None, None)

    def __enter__(self) -> None:
        self.previous = (_CURRENT.sample_keys, _CURRENT.host_keys)
        _CURRENT.sample_keys, _CURRENT.host_keys = self.keys, None

    def __exit__(self, *exc: object) -> None:
        _CURRENT.sample_keys, _CURRENT.host_keys = self.previous


def layer_key(name: str) -> int:
    """The 32-bit key of a layer from its name in the model (`head.1`): the same in every process."""
    return zlib.crc32(name.encode())


def assign_layer_keys(model: nn.Module) -> int:
    """Key every `KeyedDropout` of `model` that has none by its module name; returns how many the model has.

    Call it on the bare model: DDP's and compile's wrappers prefix the names (`module.`, `_orig_mod.`)."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, KeyedDropout):
            count += 1
            if module.key is None:
                module.key = layer_key(name)
    return count


class KeyedDropout(nn.Module):
    """`nn.Dropout(p)` whose masks depend only on (seed, epoch, sample, layer, position).

    A drop-in replacement in a model the framework trains: the batch dimension is the first.
    `key` names the layer's masks (default: a hash of the module's name, set when the framework
    builds the model); two layers with the same key drop the same positions.
    """

    def __init__(self, p: float = 0.1, key: Optional[int] = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p!r} is not in [0, 1)")
        self.p = p
        self.key = key
        self._position_hashes: dict[torch.device, torch.Tensor] = {}  # per device, the longest needed so far
        self._position_hashes_host: Optional[np.ndarray] = None

    def extra_repr(self) -> str:
        return f"p={self.p}, key={self.key}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keys = _CURRENT.sample_keys
        if keys is None:
            return F.dropout(x, self.p, training=True)
        if self.key is None:
            raise RuntimeError("a KeyedDropout layer has no key: call "
                               "framework.train.keyed_dropout.assign_layer_keys(model) before training")
        if keys.shape[0] != x.shape[0]:
            raise RuntimeError(f"KeyedDropout got a batch of {x.shape[0]} rows for {keys.shape[0]} keyed samples: "
                               "its input must have the samples as its first dimension")
        if keys.device != x.device:  # e.g. keys made on the host for a user's own loop
            keys = keys.to(x.device)
        per_sample = x.numel() // x.shape[0] if x.shape[0] else 0
        scale = 1.0 / (1.0 - self.p)
        if x.dtype == torch.float32 and x.device.type == "cpu" and not torch.compiler.is_compiling():
            # The mask hashed in NumPy as the factor itself (0 or the scale in float32, the factor the two
            # multiplications below apply): one multiplication forward and one backward, as torch's dropout
            # on a CPU, the same bits; autograd keeps the float factor (4 bytes an element instead of 1).
            keep = _keep_mask_on_host(self._host_positions(per_sample), _CURRENT.on_host(keys), int(self.p * 2 ** 32))
            return x * torch.from_numpy(np.where(keep, np.float32(scale), np.float32(0.0)).reshape(x.shape))
        keep = keep_mask(self._positions(per_sample, x.device).view(x.shape[1:]), keys, self.p)
        # Autograd keeps only the boolean mask for backward (as torch's dropout does).
        return x * keep * scale

    def _host_positions(self, count: int) -> np.ndarray:
        """`_positions(count)` on the CPU as a flat NumPy uint32 array (the host path's; the longest kept)."""
        cached = self._position_hashes_host
        if cached is None or cached.size < count:
            cached = self._position_hashes_host = position_hashes(count, self.key, torch.device("cpu")).numpy(
            ).astype(np.uint32)
        return cached[:count]

    def _positions(self, count: int, device: torch.device) -> torch.Tensor:
        """The hashes of positions 0..count-1 in this layer. A shape's positions in row-major order are a
        prefix of a longer one's, so one cached vector per device serves every sequence length."""
        if torch.compiler.is_compiling():  # compiled: fused into the kernel, nothing to cache
            return position_hashes(count, self.key, device)
        cached = self._position_hashes.get(device)
        if cached is None or cached.numel() < count:
            cached = self._position_hashes[device] = position_hashes(count, self.key, device)
        return cached[:count]


def position_hashes(count: int, layer: int, device: torch.device) -> torch.Tensor:
    """hash32(position ^ layer) for positions 0..count-1 (int64)."""
    return hash32_(torch.arange(count, device=device, dtype=torch.int64) ^ layer)


# Elements hashed at once: the mix needs two int64 scratch tensors (16 bytes an element), so a large
# activation is masked a block of samples at a time (compiled, the mix is fused and needs no scratch).
_BLOCK_ELEMENTS = 1 << 20


def keep_mask(position_hash: torch.Tensor, keys: torch.Tensor, p: float) -> torch.Tensor:
    """The boolean keep mask, batch first, of samples with `keys` at positions hashed as `position_hash`
    (one sample's shape): True with probability 1 - p, to 2**-32."""
    threshold = int(p * 2 ** 32)
    if keys.device.type == "cpu" and not torch.compiler.is_compiling():
        keep = _keep_mask_on_host(position_hash.numpy().reshape(-1).astype(np.uint32), keys.numpy().astype(np.uint32),
                                  threshold)
        return torch.from_numpy(keep.reshape((len(keys),) + position_hash.shape))
    sample = keys.view((-1,) + (1,) * position_hash.dim())
    rows = max(1, _BLOCK_ELEMENTS // max(1, position_hash.numel()))
    if rows >= len(keys) or torch.compiler.is_compiling():
        return hash32_(position_hash ^ sample) >= threshold
    keep = torch.empty((len(keys),) + position_hash.shape, dtype=torch.bool, device=keys.device)
    for start in range(0, len(keys), rows):
        torch.ge(hash32_(position_hash ^ sample[start:start + rows]), threshold, out=keep[start:start + rows])
    return keep


def _keep_mask_on_host(positions: np.ndarray, keys: np.ndarray, threshold: int) -> np.ndarray:
    """`keep_mask` in NumPy on uint32 (flat `positions` hashes and `keys`, both uint32), whose products wrap
    mod 2**32 by themselves: the same bits in a third of the time of int64 tensor ops on a CPU (8,192 elements:
    16 us instead of 46; 65,536: 70 instead of 215). Samples x positions."""
    keep = np.empty((len(keys), positions.size), dtype=bool)
    rows = max(1, _BLOCK_ELEMENTS // max(1, positions.size))
    for start in range(0, len(keys), rows):
        np.greater_equal(hash32_(positions[None, :] ^ keys[start:start + rows, None]), np.uint32(threshold),
                         out=keep[start:start + rows])
    return keep
