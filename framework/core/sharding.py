"""FSDP2 on every machine: the launcher's FSDP config trains sharded on GPUs (NCCL) and, unchanged, on a machine
without GPUs (gloo), so a cluster config can be tried on a laptop and tested in CI.

Accelerate selects FSDP only when its distributed type is an accelerator's (MULTI_GPU, ...): on a CPU it would
silently drop the plugin (`MULTI_CPU`: DDP) or, through `accelerate launch` with an FSDP config, run each process
alone. Here the process group is formed first (gloo on a CPU), the shared state's type is set to MULTI_GPU, and
the Accelerator is then built with the FSDP plugin read from the launcher's environment: Accelerate's own FSDP2
preparation runs unmodified (parameters become DTensor shards). `check_sharded` refuses a run whose model did not
end up sharded, so there is never a silent fallback to DDP or to N lone processes. FSDP version 1 cannot run on a
CPU this way (torch refuses its compute device), so a CPU run needs `fsdp_version: 2`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Optional

import torch

from framework.core.errors import UserError


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin_for(cuda: bool, process_group_kwargs: dict[str, Any]) -> Optional[Any]:
    """The FSDP plugin of the launcher's config, with the process group formed so that Accelerate uses it on this
    machine (see the module's docstring); None when FSDP was not asked for."""
    if not fsdp_requested():
        return None
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    version = os.environ.get("FSDP_VERSION", "1")  # what the launcher config says (Accelerate's default is 1)
    if not cuda and version != "2":
        raise UserError(f"FSDP version {version} does not run on a CPU (torch refuses its compute device); set "
                        f"fsdp_version: 2 in the launcher config (accelerate_configs/fsdp.yaml has it)")
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment
    if cuda:
        return plugin
    state = PartialState(cpu=True, **process_group_kwargs)
    if state.num_processes > 1:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU
    return plugin


def wrap_blocks_not_containers(accelerator: Any, model: torch.nn.Module) -> None:
    """Call before preparing `model`. fsdp.yaml's size-based auto-wrap is meant to give each large block of a
    model (a transformer's layer, a ResNet stage) its own FSDP unit, gathered whole only for its own forward and
    backward. Accelerate's FSDP2 version (1.15) picks every module above `fsdp_min_num_params` instead:
    containers such as a transformer's `nn.ModuleList` of layers, which torch's `fully_shard` refuses (they have
    no forward), and modules whose parent reads their weights directly (the output projection inside
    `nn.MultiheadAttention`), which then fail with sharded weights. So every transformer of that size failed.
    Here the rule is applied to the blocks the model runs one after another: the members of its
    `nn.ModuleList`, `nn.ModuleDict` and `nn.Sequential` containers above the size (all instances of a class,
    or none); they are handed to Accelerate as the classes to wrap, and the rest stays in the model's own unit.
    Other policies are left as configured."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None or not fsdp_requested():
        return
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    policy = plugin.auto_wrap_policy
    if (policy.func if isinstance(policy, functools.partial) else policy) is not size_based_auto_wrap_policy:
        return
    containers = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)
    sizes: dict[type, list[int]] = {}
    for module in model.modules():
        if isinstance(module, containers):
            for block in module.children():
                sizes.setdefault(type(block), []).append(sum(p.numel() for p in block.parameters()))
    classes = {cls for cls, counts in sizes.items()
               if min(counts) > plugin.min_num_params and not issubclass(cls, containers)}
    plugin.transformer_cls_names_to_wrap = sorted(cls.__name__ for cls in classes)
    plugin.auto_wrap_policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=classes)


def shard_count(model: torch.nn.Module) -> int:
    """Over how many processes the model's parameters are sharded (1: not sharded)."""
    from torch.distributed.tensor import DTensor

    for parameter in model.parameters():
        if isinstance(parameter, DTensor):
            return parameter.device_mesh.size()
    return 1


def check_sharded(accelerator: Any, model: torch.nn.Module) -> Optional[int]:
    """Under FSDP, the number of shards of the prepared model; a model that did not end up sharded over the job's
    processes is refused (never a silent fallback). None without FSDP."""
    from accelerate.utils import DistributedType

    if not fsdp_requested() and accelerator.distributed_type != DistributedType.FSDP:
        return None
    shards = shard_count(model)
    if accelerator.distributed_type != DistributedType.FSDP or shards != accelerator.num_processes:
        raise UserError(f"the FSDP launcher config did not shard the model (distributed type "
                        f"{accelerator.distributed_type}, {shards} shard(s) for {accelerator.num_processes} "
                        f"processes); run with accelerate_configs/fsdp.yaml and --num_processes 2 or more")
    return shards
