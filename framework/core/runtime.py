"""Building the Accelerator: precision, process group, seeding, and the run banner."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, set_seed

from framework.core.compilation import check_compile_toolchain, dynamo_plugin
from framework.core.config import TrainingConfig
from framework.core.errors import FlagError, PeerLost, UserError
from framework.core.job_watch import watch_other_nodes
from framework.core.sharding import fsdp_plugin_for


@dataclass(frozen=True)
class Precision:
    """The precision asked for and the one that really runs, with the reason when they differ."""

    requested: str
    effective: str
    note: Optional[str] = None


CPU_FP16_NOTE = ("fp16 on a CPU runs real float16 autocast and dynamic loss scaling, but most CPUs compute "
                 "float16 slower than float32; --mixed_precision bf16 is the fast CPU choice")


def resolve_precision(flag: Optional[str], launcher: Optional[str], cuda: bool) -> Precision:
    """Pick the precision: the CLI flag, else the launcher config, else fp16 on CUDA and no on CPU.

    fp16 runs everywhere, on a CPU too (see `enable_cpu_fp16`), with a note there that it is
    slower than fp32 on most CPUs.
    """
    requested = flag or launcher or ("fp16" if cuda else "no")
    return Precision(requested, requested, CPU_FP16_NOTE if requested == "fp16" and not cuda else None)


def enable_cpu_fp16(accelerator: Accelerator) -> None:
    """Give a CPU Accelerator under fp16 what Accelerate gives a CUDA one: autocast and a GradScaler.

    Accelerate 1.15 accepts `mixed_precision="fp16"` on a CPU but leaves `native_amp` off and
    `scaler` None there, so the run would silently be fp32. torch runs both on a CPU
    (`torch.autocast("cpu", dtype=torch.float16)`, `torch.amp.GradScaler("cpu")`), so the two
    attributes Accelerate sets on CUDA are set here, before anything is prepared: `prepare`
    then wraps the model's forward in float16 autocast, `backward` scales the loss,
    `unscale_gradients` unscales, and checkpoints hold the scaler, exactly as on CUDA.
    """
    if accelerator.device.type != "cpu" or accelerator.mixed_precision != "fp16" or accelerator.scaler is not None:
        return
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")


def build_accelerator(config: TrainingConfig) -> tuple[Accelerator, Precision]:
    """Create the Accelerator for `config` and seed every RNG.

    On a machine without CUDA the Accelerator is built with `cpu=True`: that is
    what turns a multi-process launch (`accelerate launch` with a multi-process
    config, or `torchrun`) into one gloo group instead of N unconnected copies.
    A launch with WORLD_SIZE > 1 that still ends up single-process is refused.
    """
    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "false").lower() not in ("1", "true")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # Accelerate's DeepSpeed backward steps the engine unless accumulate() drives it; the exact
        # accumulation here does not use accumulate(), so every micro-batch would be an optimizer step.
        raise UserError("DeepSpeed launcher configs are not supported (untested with exact accumulation); use "
                        "cpu.yaml, cpu_2proc.yaml, single_gpu.yaml, multi_gpu.yaml, multi_node.yaml or fsdp.yaml "
                        "from accelerate_configs/")
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    precision = resolve_precision(config.mixed_precision, launcher if launcher in ("no", "fp16", "bf16") else None, cuda)
    # Gradient accumulation is done by framework.train.loop with exact per-sample
    # weights, so the Accelerator must not divide losses by N on its own.
    trackers = available_trackers(config.trackers, explicit=config.report_to != "all")
    join_restarted_group(cuda, timedelta(seconds=config.ddp_timeout))
    # --ddp_timeout bounds every collective of the default group (and of the framework's own CPU group).
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=config.ddp_timeout))
    fsdp_plugin = fsdp_plugin_for(cuda, timeout.to_kwargs())  # FSDP2 on GPUs and CPUs alike (framework.core.sharding)
    accelerator = Accelerator(mixed_precision=precision.effective, cpu=not cuda, gradient_accumulation_steps=1,
                              fsdp_plugin=fsdp_plugin,
                              log_with=trackers or None, project_dir=config.output_dir, kwargs_handlers=[timeout],
                              dynamo_plugin=dynamo_plugin(config.torch_compile or config.torch_compile_mode is not None,
                                                          config.torch_compile_mode or "default"))
    check_process_group(int(os.environ.get("WORLD_SIZE", "1")), accelerator.num_processes)
    watch_other_nodes()  # multi-node: end with the job when another node's launcher has ended
    enable_cpu_fp16(accelerator)
    check_compile_toolchain(accelerator)
    if config.max_memory_gib:
        cap_cuda_memory(config.max_memory_gib, accelerator.device)
    set_seed(config.seed)
    if not (accelerator.is_main_process and sys.stderr.isatty()):
        # datasets' map/cast bars: one set, on a terminal, as for training (see framework.core.progress)
        datasets.disable_progress_bars()
    if precision.note:
        say(accelerator, f"note: {precision.note}")
    return accelerator, precision


def join_restarted_group(cuda: bool, timeout: timedelta) -> None:
    """Form the process group under a store namespace of this worker group's restart, before Accelerate does.

    Under torch's elastic agent with its own store (torchrun's static rendezvous, which `accelerate launch` uses),
    the workers of a restart (`--max-restarts` / `--max_restarts` after a worker died) reuse the store of the
    worker group before them, where that group's process-group keys are still written: a new rank can read a dead
    rank's address and fail to connect ("Gloo connectFullMesh failed ... Connection refused"), or wait on a
    barrier counter already counted (a hang). Keys under "framework/restart_<n>/" are this restart's alone.
    Accelerate then uses the group formed here."""
    import torch.distributed as dist

    restart, world = os.environ.get("TORCHELASTIC_RESTART_COUNT"), int(os.environ.get("WORLD_SIZE", "1"))
    if (restart is None or world < 2 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or not dist.is_available() or dist.is_initialized()):
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.PrefixStore(f"framework/restart_{restart}", store),
                            rank=int(os.environ["RANK"]), world_size=world, timeout=timeout)


def available_trackers(names: list[str], explicit: bool) -> list[str]:
    """The trackers in `names` whose package is installed.

    Accelerate silently drops a requested tracker that is not installed; a tracker
    named explicitly with --report_to is an error instead.
    """
    from accelerate.tracking import get_available_trackers

    installed = {str(t) for t in get_available_trackers()}
    missing = [n for n in names if n not in installed]
    if missing and explicit:
        raise FlagError("report_to", f"{missing[0]}: the {missing[0]} package is not installed "
                        f"(pip install {missing[0]}), or leave it out of --report_to")
    return [n for n in names if n in installed]


def cap_cuda_memory(gib: float, device: torch.device) -> None:
    """Let this process allocate at most `gib` GiB of CUDA memory (`--max_memory_gib`)."""
    if device.type != "cuda":
        raise FlagError("max_memory_gib", f"needs a CUDA device; this run is on {device.type}")
    total = torch.cuda.get_device_properties(device).total_memory
    if gib * 2**30 >= total:
        raise FlagError("max_memory_gib", f"{gib} is not below this GPU's {total / 2**30:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, device)


def check_process_group(launched_world_size: int, num_processes: int) -> None:
    """Refuse a multi-process launch whose processes did not join one group (each would train on everything)."""
    if launched_world_size > 1 and num_processes != launched_world_size:
        raise UserError(
            f"launched with WORLD_SIZE={launched_world_size} but the processes did not form one group "
            f"(num_processes={num_processes}); each would train alone on all the data"
        )


def say(accelerator: Accelerator, text: str) -> None:
    """Print once per job, on the global main process (`accelerator.print` prints once per node)."""
    if accelerator.is_main_process:
        print(text, flush=True)


def device_name(accelerator: Accelerator) -> str:
    """A human-readable device description, e.g. 'cuda:0 (NVIDIA H100 80GB HBM3)' or 'cpu'."""
    device = accelerator.device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device.type)


def _describe(notes: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in notes.items())


def format_banner(*, world_size: int, device: str, precision: Precision, micro_batch: int, accumulation: int,
                  effective_batch: int, steps_per_epoch: Optional[int], total_steps: int, train_samples: Optional[int],
                  compiled: Optional[str] = None, data_notes: Optional[dict] = None,
                  preparation_s: Optional[float] = None, loader: Optional[tuple[int, str]] = None) -> str:
    """The run banner: where it runs, what precision really runs, the effective batch and the steps planned."""
    if effective_batch == micro_batch * accumulation * world_size:
        batch = (f"{micro_batch} micro-batch x {accumulation} accumulation x {world_size} processes"
                 f" = {effective_batch} samples per optimizer step")
    else:  # --total_train_batch_size not a multiple of micro-batch x processes
        batch = (f"{effective_batch} samples per optimizer step = {accumulation} micro-batches of at most "
                 f"{micro_batch} on each of {world_size} processes")
    mode = {"no": "fp32", "fp16": "fp16 autocast + dynamic loss scaling", "bf16": "bf16 autocast"}[precision.effective]
    asked = f" (asked for {precision.requested})" if precision.requested != precision.effective else ""
    return "\n".join([
        "=" * 72,
        f"processes       : {world_size}   device: {device}",
        f"precision       : {precision.effective} = {mode}{asked}",
        f"torch.compile   : {compiled or 'off'}",
        f"effective batch : {batch}",
        f"optimizer steps : {total_steps} planned " + (f"({steps_per_epoch} per epoch over {train_samples} training "
                                                       f"samples)" if steps_per_epoch else "(a stream: an epoch ends "
                                                       "where the stream does)"),
        *([f"data            : {_describe(data_notes)}"] if data_notes else []),
        *([f"preparation     : {preparation_s:.1f} s (loading and preparing the data, building the model)"]
          if preparation_s is not None else []),
        *([f"data loading    : {loader[0]} DataLoader worker{'s' if loader[0] != 1 else ''} per process "
           f"({loader[1]})"] if loader is not None else []),
        "=" * 72,
    ])


# What torch.distributed's backends say when a peer stalls past the timeout (gloo: "Timed out waiting 5000ms for
# recv operation"; NCCL's watchdog: "Watchdog caught collective operation timeout") or is gone ("Connection closed
# by peer", "Connection reset by peer", "Broken pipe").
_TIMED_OUT = ("timed out", "timeout")
_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused")


def peer_lost(err: BaseException, num_processes: int, timeout_s: int) -> Optional[PeerLost]:
    """The one-line PeerLost for a collective's failure (`err`) in a job of several processes, or None when `err` is
    something else."""
    text = str(err).strip()
    lowered = text.lower()
    if num_processes < 2 or not isinstance(err, RuntimeError):
        return None
    cause = text.splitlines()[0] if text else type(err).__name__
    cause = cause.split("] ", 1)[-1][:160]  # gloo's messages start with a source location in brackets
    if any(word in lowered for word in _TIMED_OUT):
        return PeerLost(f"waited --ddp_timeout {timeout_s} s for another process in a collective ({cause}): a "
                        f"process stalled (in its data loader, on a hung file system) or died; see its output. Raise "
                        f"--ddp_timeout if a step, an evaluation or a checkpoint can legitimately take longer")
    if any(word in lowered for word in _PEER_GONE):
        return PeerLost(f"another process left the job during a collective ({cause}): it died or was killed; see "
                        f"its output")
    return None
