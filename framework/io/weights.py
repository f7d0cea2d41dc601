"""Model weights as the user's module names them: the state dict, and model.safetensors.

A model compiled by Accelerate (`--torch_compile`, or a launcher config with a
dynamo backend) is a `torch.compile` wrapper whose state-dict keys carry an
`_orig_mod.` prefix; `Accelerator.save_model` and `get_state_dict` keep it
(accelerate 1.15), so weights saved from a compiled run would not load into the
plain model. Here the prefix is stripped: checkpoints and model.safetensors have
the same keys with and without compilation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from framework.io.files import umask_mode
from framework.io.names import WEIGHTS_FILE

COMPILED_PREFIX = "_orig_mod."


def model_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full model state, with the keys of the uncompiled, unwrapped model.

    Call it on every process: under FSDP gathering the state is a collective.
    Tensors that share storage (tied weights) are cloned, since safetensors
    refuses aliases and every key is needed to load the state back strictly.
    """
    state = accelerator.get_state_dict(model)
    seen: set[int] = set()
    clean = {}
    for key, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if storage in seen:
            tensor = tensor.clone()
        elif storage is not None:
            seen.add(storage)
        clean[key.replace(COMPILED_PREFIX, "")] = tensor.contiguous()
    return clean


def bare_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside the DDP and torch.compile wrappers (it shares their parameters)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def load_weights(accelerator: Accelerator, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put whole weights (as model.safetensors holds them) into a prepared model; under FSDP each process keeps
    its shard of them (every process calls it)."""
    from accelerate.utils import DistributedType

    bare = bare_model(accelerator, model)
    if accelerator.distributed_type == DistributedType.FSDP:
        from framework.io.sharded import load_full_model_state

        load_full_model_state(bare, state)
    else:
        bare.load_state_dict(state)


def save_weights(accelerator: Accelerator, model: torch.nn.Module, directory: str | Path) -> Path:
    """Write `directory/model.safetensors` from the main process, atomically; call it on every process."""
    state = model_state_dict(accelerator, model)  # a collective under FSDP
    path = Path(directory) / WEIGHTS_FILE
    if accelerator.is_main_process:
        tmp = path.with_name(f".tmp_{WEIGHTS_FILE}")
        save_file(state, str(tmp))
        umask_mode(tmp)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def weights_problem(path: Path) -> Optional[str]:
    """Why a model.safetensors file cannot be loaded (missing, truncated, not safetensors), or None.

    Reads only the header, which lists every tensor's byte range; safetensors refuses a file
    shorter than those ranges, so a truncated copy is caught without loading the weights.
    """
    from safetensors import safe_open

    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own error type, or OSError
        return f"{path.name} is damaged ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
    return None
