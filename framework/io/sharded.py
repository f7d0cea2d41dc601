"""The model and optimizer state of an FSDP run as one shard per process (torch.distributed.checkpoint).

Under FSDP no process holds the whole model or optimizer state, and none gathers it to write a checkpoint: each
process writes its own shard (`__<rank>_0.distcp`) into the checkpoint's `sharded/` folder and the first process
writes the index (`.metadata`). Reading it back reshards: the same folder loads into a run on another number of
processes, with or without FSDP (the tensors are keyed by the bare model's parameter names, the same under DDP,
torch.compile and FSDP). A plain checkpoint (model.safetensors and the optimizer's state in trainer.pt) loads into
an FSDP run too: each process keeps its shard of the full tensors.

A `.distcp` file has no header that would show truncation, so the checkpoint's state.json lists every file of the
folder with its size and SHA-256 (`shard_manifest`), and `manifest_problem` checks them before anything is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from framework.data.identity import content_hash

SHARDED_DIR = "sharded"


def _state_dict_api():
    from torch.distributed.checkpoint import state_dict

    return state_dict


def _resharded(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its parameters sharded. FSDP2 leaves the root module's parameters gathered whole after a
    forward without a backward (an evaluation) until the next step; the state-dict API expects the shards."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()
    return model


def _bare_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def save_sharded(model: torch.nn.Module, optimizer: Any, directory: Path) -> None:
    """Write the model's and the optimizer's state, each process its own shard, into `directory` (a collective:
    every process calls it). `model` is the bare model (framework.io.weights.bare_model)."""
    import torch.distributed.checkpoint as dcp

    model_state, optimizer_state = _state_dict_api().get_state_dict(_resharded(model), _bare_optimizer(optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def load_sharded(model: torch.nn.Module, optimizer: Any, directory: Path) -> None:
    """Load what `save_sharded` wrote into this run's model and optimizer, resharded to this run's processes (or
    whole, without FSDP). Every process calls it."""
    import torch.distributed.checkpoint as dcp

    api = _state_dict_api()
    model_state, optimizer_state = api.get_state_dict(_resharded(model), _bare_optimizer(optimizer))
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():
        # On one process without a process group torch warns that it assumes a 1-process load: that is the intent.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(directory))
    api.set_state_dict(model, _bare_optimizer(optimizer), model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def load_full_into_sharded(model: torch.nn.Module, optimizer: Any, model_state: dict[str, torch.Tensor],
                           optimizer_state: dict[str, Any]) -> None:
    """Load a plain checkpoint's full state (the weights, and `optimizer.state_dict()` as torch writes it, keyed
    by parameter position) into an FSDP run: each process keeps its own shard."""
    api = _state_dict_api()
    bare = _bare_optimizer(optimizer)
    # torch numbers the parameters by their position in the param groups; the sharded API keys them by name.
    names = {id(p): name for name, p in model.named_parameters()}
    positions = [names[id(p)] for group in bare.param_groups for p in group["params"]]
    by_name = {
        "state": {positions[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [positions[i] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    api.set_state_dict(_resharded(model), bare, model_state_dict=model_state, optim_state_dict=by_name,
                       options=api.StateDictOptions(full_state_dict=True))


def load_full_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (model.safetensors) into a sharded model: each process keeps its shard."""
    api = _state_dict_api()
    api.set_model_state_dict(_resharded(model), state, options=api.StateDictOptions(full_state_dict=True))


def sharded_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """The model's parameter names and full shapes in a sharded checkpoint (from its index)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(directory)).read_metadata()
    return {key[len("model."):]: tuple(entry.size) for key, entry in metadata.state_dict_metadata.items()
            if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}


def shard_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """Every file of a sharded folder with its size and SHA-256, for state.json (written once all are closed)."""
    return {file.name: {"bytes": file.stat().st_size, "sha256": content_hash(file)}
            for file in sorted(directory.iterdir()) if file.is_file()}


def manifest_problem(directory: Path, manifest: Any) -> Optional[str]:
    """Which file of a sharded folder is missing, truncated or changed against its manifest, or None."""
    if not isinstance(manifest, dict) or not manifest:
        return "state.json lacks the list of shard files"
    for name, entry in manifest.items():
        file = directory / name
        if not file.is_file():
            return f"the shard file {SHARDED_DIR}/{name} is missing"
        size = file.stat().st_size
        if size != entry.get("bytes"):
            return f"the shard file {SHARDED_DIR}/{name} is {size} bytes, {entry.get('bytes')} were written"
        if content_hash(file) != entry.get("sha256"):
            return f"the shard file {SHARDED_DIR}/{name} has other content than was written (SHA-256 differs)"
    return None
