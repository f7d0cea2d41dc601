"""`--torch_compile`: compiling the model with TorchInductor through Accelerate.

Accelerate compiles in `prepare`, last, around the DDP/FSDP wrapper. The
compiled wrapper prefixes state-dict keys with `_orig_mod.`; `framework.io.weights`
saves without it.
"""

from __future__ import annotations

from typing import Optional

from accelerate import Accelerator
from accelerate.utils import DynamoBackend, TorchDynamoPlugin

from framework.core.errors import FlagError


def dynamo_plugin(enabled: bool, mode: str) -> Optional[TorchDynamoPlugin]:
    """The plugin for `--torch_compile` (TorchInductor in `mode`), or None to keep the launcher config's choice."""
    return TorchDynamoPlugin(backend="inductor", mode=mode) if enabled else None


def check_compile_toolchain(accelerator: Accelerator) -> None:
    """Refuse, in one line, a TorchInductor compile that cannot generate code here.

    TorchInductor needs a C++ compiler on a CPU and Triton on CUDA; without them
    the run would fail at its first forward pass with a long traceback.
    """
    plugin = accelerator.state.dynamo_plugin
    if plugin is not None and plugin.backend == DynamoBackend.INDUCTOR:
        _check_inductor_toolchain(accelerator.device.type == "cuda")


def _check_inductor_toolchain(cuda: bool) -> None:
    if cuda:
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # the private helper moved: let torch.compile report it
            return
        if not has_triton():
            raise FlagError("torch_compile", "on CUDA needs Triton (pip install triton), which this torch lacks; "
                            "leave out --torch_compile")
        return
    try:
        from torch._inductor import config as inductor_config
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except Exception:  # torch raises its own InvalidCxxCompiler
        tried = ", ".join(c for c in inductor_config.cpp.cxx if c) if isinstance(inductor_config.cpp.cxx, tuple) \
            else str(inductor_config.cpp.cxx)
        raise FlagError("torch_compile", f"on a CPU needs a C++ compiler for TorchInductor and none works here "
                        f"(tried {tried}): install g++ or point CXX at one, or leave out --torch_compile") from None


def compile_description(accelerator: Accelerator) -> Optional[str]:
    """'inductor (mode default)' when Accelerate compiles the model, else None."""
    plugin = accelerator.state.dynamo_plugin
    if plugin is None or plugin.backend == DynamoBackend.NO:
        return None
    return f"{plugin.backend.value.lower()} (mode {plugin.mode or 'default'})"
