"""The training loop: fit -> train_epoch -> one optimizer step per window -> evaluate.

Accumulation is exact. Accelerate's `accumulate()` divides every micro-batch
loss by N, which is only right when every window holds N equal micro-batches
on every process. Here each sample's loss is weighted by
1 / (real samples in its optimizer step over all processes): the loss a
process back-propagates is sum(weight * loss) * P / n_real, because DDP then
averages the P processes' gradients. Gradients are all-reduced only on the
last micro-batch of a window (`no_sync` before it).
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DistributedType

from framework.batch_search import choose_batch_sizes
from framework.best_model import improves, load_best, metric_value, save_best
from framework.checkpoint import (checkpoint_root, load_checkpoint, resolve_checkpoint,
                                  run_identity, save_checkpoint, should_checkpoint)
from framework.compilation import compile_description
from framework.config import TrainingConfig, config_to_dict
from framework.data import TrainData, Window, to_device
from framework.errors import Preempted, TrainingDiverged, UserError
from framework.evaluation import Report, evaluate, split_batch
from framework.flops import peak_tflops
from framework.optim import total_optimizer_steps
from framework.outputs import RunDirectory
from framework.plots import save_plots
from framework.preemption import StopSignal
from framework.progress import progress_bar
from framework.runtime import Precision, device_name, format_banner, say
from framework.weights import save_weights

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(TrainingDiverged):
    """Training produced a NaN/inf loss, or too many fp16 steps in a row were skipped (exit code 3)."""


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default loss: cross entropy per sample (no reduction), so the loop can weight samples."""
    return F.cross_entropy(logits, labels, reduction="none")


@dataclass
class TrainState:
    """Where training stands; everything needed to continue from here."""

    step: int = 0  # optimizer steps taken (windows consumed), skipped fp16 steps included
    epoch: int = 0
    window: int = 0  # next window within `epoch`
    skipped_steps: int = 0
    consecutive_skipped: int = 0
    samples_seen: int = 0
    last_eval_step: int = -1
    best_step: int = -1  # the best evaluation so far (--metric_for_best_model), and its value
    best_value: Optional[float] = None
    evals_without_improvement: int = 0
    micro_batch: int = 0  # chosen by --auto_find_batch_size (0: not searched); reused on resume
    eval_batch: int = 0  # evaluation forward batch chosen by --auto_find_batch_size (0: not searched)


@dataclass
class _Running:
    """Sums since the last log: the weighted loss stays on the device and is read (one sync) every
    `logging_steps`; the sample count is known on the host from the window plan."""

    loss: torch.Tensor
    samples: int = 0


@dataclass
class FitResult:
    """What `fit` returns: the last evaluation report and the summary written to summary.json."""

    report: Report
    summary: dict[str, Any]
    state: TrainState = field(default_factory=TrainState)
    optimizer: Any = None  # the (prepared) optimizer that trained, e.g. to read its settings back


@dataclass
class _Context:
    accelerator: Accelerator
    config: TrainingConfig
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_data: TrainData
    eval_loader: Any
    class_names: Sequence[str]
    run_dir: RunDirectory
    loss_fn: LossFn
    total_steps: int
    stop: StopSignal
    params: list = field(default_factory=list)
    extra_metrics: Optional[Callable] = None
    flops_per_sample: Optional[float] = None
    loss_scale: Optional[float] = None  # fp16 GradScaler scale after the last step
    samples_at_start: int = 0  # samples seen before this process started (non-zero after a resume)
    bar: Any = None
    report: Optional[Report] = None
    train_time: float = 0.0
    stopping: bool = False  # all processes agreed to stop (a stop signal arrived)
    early_stopped: bool = False  # --early_stopping_patience evaluations without improvement
    checkpointed_step: int = -1


def _optimizer_step(ctx: _Context, window: Window, batches: Any, running: _Running) -> bool:
    """Forward/backward every micro-batch of `window`, then clip and step. Returns whether the step was skipped."""
    accelerator, model = ctx.accelerator, ctx.model
    scale = accelerator.num_processes / window.num_real
    last = len(window.micro_batches) - 1
    for j, batch in enumerate(batches):
        batch = to_device(batch, accelerator.device)
        inputs, labels = split_batch(batch)
        with contextlib.nullcontext() if j == last else accelerator.no_sync(model):
            logits = model(**inputs)
            weighted = (ctx.loss_fn(logits.float(), labels) * batch["weight"]).sum()
            accelerator.backward(weighted * scale)
        running.loss += weighted.detach()
    running.samples += window.num_real
    if ctx.config.max_grad_norm > 0:
        _clip_gradients(accelerator, ctx.params, ctx.config.max_grad_norm)
    skipped = _step_optimizer(ctx)
    if not skipped:
        ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return skipped


def _clip_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm, on unscaled fp16 gradients.

    Under DDP (or one process) the gradients are already the same everywhere, so
    torch's own clipping is exact; Accelerate's version adds a per-parameter DTensor
    scan each step. Sharded and special backends keep Accelerate's implementation.
    """
    if accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        accelerator.unscale_gradients()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        accelerator.clip_grad_norm_(params, max_norm)


def _step_optimizer(ctx: _Context) -> bool:
    """Apply the update; returns True when fp16 loss scaling found inf/NaN gradients and skipped it.

    `AcceleratedOptimizer.step` (accelerate 1.15) looks up whether the `lomo_optim`
    package is installed, through importlib, twice per call: about 0.4 ms per step
    on the CPU here, the bulk of the gap between a plain Accelerate loop and a raw one.
    Where it adds nothing (no XLA, no DeepSpeed) the wrapped optimizer is stepped here
    with the same GradScaler calls.
    """
    accelerator, optimizer = ctx.accelerator, ctx.optimizer
    if accelerator.distributed_type in (DistributedType.XLA, DistributedType.DEEPSPEED):
        optimizer.step()
        return optimizer.step_was_skipped
    inner = getattr(optimizer, "optimizer", optimizer)
    scaler = accelerator.scaler
    if scaler is None:
        inner.step()
        return False
    if ctx.loss_scale is None:
        ctx.loss_scale = scaler.get_scale()
    scaler.step(inner)  # reads the inf/NaN flags on the host: the one sync fp16 needs per step
    scaler.update()
    # The scale backs off exactly when the step was skipped. Reading it right after the
    # sync above costs next to nothing, and it is the next step's starting scale.
    previous, ctx.loss_scale = ctx.loss_scale, scaler.get_scale()
    return ctx.loss_scale < previous


def _log_train(ctx: _Context, state: TrainState, running: _Running, lr: float, started: float) -> None:
    """Reduce the running sums over processes (the one sync per logging interval) and log them."""
    # A sum is finite exactly when every term was (inf and NaN propagate), so one read checks them all.
    loss_sum = ctx.accelerator.reduce(running.loss, reduction="sum").item()
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"the training loss was NaN or inf in the steps up to step {state.step}; lower --learning_rate, "
            f"check the data, or use --mixed_precision bf16/no")
    loss = loss_sum / max(running.samples, 1)
    epoch = state.epoch + state.window / ctx.train_data.plan.windows_per_epoch
    elapsed = ctx.train_time + time.perf_counter() - started  # after the reduce above, so the device is synced
    _log(ctx, {"step": state.step, "epoch": round(epoch, 4), "loss": loss, "lr": lr, "elapsed_s": elapsed})
    rate = _samples_per_second(ctx, state, elapsed)
    postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}"}
    if ctx.flops_per_sample:
        postfix["TFLOP/s"] = f"{ctx.flops_per_sample * rate / 1e12:.3g}"
    if state.skipped_steps:
        postfix["skipped"] = state.skipped_steps
    ctx.bar.set_postfix(postfix, refresh=False)
    running.loss.zero_()
    running.samples = 0


def _samples_per_second(ctx: _Context, state: TrainState, seconds: float) -> float:
    """Training throughput of this process's run (a resumed run counts from its resume)."""
    return (state.samples_seen - ctx.samples_at_start) / max(seconds, 1e-9)


def _log(ctx: _Context, record: dict[str, Any]) -> None:
    """One metrics.jsonl line, and the same values to the --report_to trackers."""
    ctx.run_dir.log(record)
    ctx.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def _evaluate(ctx: _Context, state: TrainState) -> None:
    ctx.report = evaluate(ctx.accelerator, ctx.model, ctx.eval_loader, ctx.class_names, ctx.loss_fn,
                          forward_batch=state.eval_batch, extra_metrics=ctx.extra_metrics)
    state.last_eval_step = state.step
    epoch = state.epoch + state.window / ctx.train_data.plan.windows_per_epoch
    _log(ctx, {"step": state.step, "epoch": round(epoch, 4), **ctx.report.summary()})
    _track_best(ctx, state)


def _track_best(ctx: _Context, state: TrainState) -> None:
    """Keep the best evaluation (weights and report in output_dir/best) and count evaluations without improvement."""
    config, key = ctx.config, ctx.config.best_metric
    if not key:
        return
    value = metric_value(ctx.report, key)  # the same on every process: the evaluation is gathered
    if improves(value, state.best_value, key, config.early_stopping_threshold):
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    if improves(value, state.best_value, key):
        state.best_step, state.best_value = state.step, value
        if config.load_best_model_at_end:
            save_best(ctx.accelerator, ctx.model, ctx.report, config.output_dir, state.step, key)
    if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
        ctx.early_stopped = True


def _checkpoint(ctx: _Context, state: TrainState) -> None:
    ctx.checkpointed_step = state.step
    save_checkpoint(ctx.accelerator, ctx.config.output_dir, model=ctx.model, optimizer=ctx.optimizer,
                    scheduler=ctx.scheduler, state=state,
                    identity=run_identity(ctx.train_data.plan, ctx.config.seed),
                    save_total_limit=ctx.config.save_total_limit)


def train_epoch(ctx: _Context, state: TrainState) -> None:
    """Train from `state.window` to the end of `state.epoch` (or to the last planned step)."""
    config, accelerator = ctx.config, ctx.accelerator
    running = _Running(torch.zeros((), device=accelerator.device))
    ctx.model.train()
    started = time.perf_counter()
    for window, batches in ctx.train_data.epoch(state.epoch, state.window):
        lr = ctx.scheduler.get_last_lr()[0]  # the lr this step applies
        skipped = _optimizer_step(ctx, window, batches, running)
        state.step += 1
        state.window += 1
        state.samples_seen += window.num_real
        state.skipped_steps += skipped
        state.consecutive_skipped = state.consecutive_skipped + 1 if skipped else 0
        if state.consecutive_skipped > config.max_consecutive_skipped_steps:
            raise NonFiniteLossError(
                f"{state.consecutive_skipped} fp16 steps in a row were skipped for inf/NaN gradients "
                f"(limit --max_consecutive_skipped_steps {config.max_consecutive_skipped_steps})")
        ctx.bar.update(1)
        done = state.step >= ctx.total_steps
        if state.step % config.logging_steps == 0 or done:
            _log_train(ctx, state, running, lr, started)
        if config.eval_steps and state.step % config.eval_steps == 0:
            ctx.train_time += time.perf_counter() - started
            _evaluate(ctx, state)
            started = time.perf_counter()
            if ctx.early_stopped:
                break
        if should_checkpoint(config.checkpoint_every, state.step, end_of_epoch=False):
            ctx.train_time += time.perf_counter() - started
            _checkpoint(ctx, state)
            started = time.perf_counter()
        if done:
            break
        if ctx.stop.agreed():  # every process calls it once per step, so all agree on this step
            ctx.stopping = True
            break
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    ctx.train_time += time.perf_counter() - started


def _stop_with_checkpoint(ctx: _Context, state: TrainState) -> None:
    """A stop signal was agreed on: write one complete checkpoint (unless this step has one) and stop."""
    what = ctx.stop.received or "a stop signal on another process"
    if ctx.accelerator.distributed_type == DistributedType.FSDP:
        raise Preempted(f"{what} received: stopped after optimizer step {state.step}; FSDP runs cannot "
                        f"checkpoint yet, so this run cannot be resumed")
    if ctx.checkpointed_step != state.step:
        _checkpoint(ctx, state)
    raise Preempted(f"{what} received: stopped after optimizer step {state.step} of {ctx.total_steps} and saved "
                    f"{checkpoint_root(ctx.config.output_dir) / f'step_{state.step}'}; run the same command with "
                    f"--resume_from_checkpoint auto to continue")


def _flop_rates(ctx: _Context, state: TrainState, precision: Precision) -> dict[str, Optional[float]]:
    """Model FLOPs per sample, the FLOP rate of the whole job, and MFU against the cards' dense peak."""
    if not ctx.flops_per_sample:
        return {"model_flops_per_sample": None, "model_tflops_per_second": None, "mfu": None}
    tflops = ctx.flops_per_sample * _samples_per_second(ctx, state, ctx.train_time) / 1e12
    peak = peak_tflops(device_name(ctx.accelerator), precision.effective)
    return {"model_flops_per_sample": ctx.flops_per_sample, "model_tflops_per_second": tflops,
            "mfu": tflops / (peak * ctx.accelerator.num_processes) if peak else None}


def _peak_memory() -> dict[str, Optional[float]]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def fit(accelerator: Accelerator, config: TrainingConfig, model: torch.nn.Module, optimizer: Any, scheduler: Any,
        train_data: TrainData, eval_loader: Any, *, class_names: Sequence[str], precision: Precision,
        run_dir: RunDirectory, loss_fn: LossFn = per_sample_cross_entropy,
        data_notes: Optional[dict[str, Any]] = None, extra_metrics: Optional[Callable] = None,
        flops_per_sample: Optional[float] = None) -> FitResult:
    """Train `model` to the planned number of steps, evaluating at each epoch end (and every eval_steps).

    `model`, `optimizer` and `eval_loader` must already be prepared; `scheduler`
    must not be (see `framework.optim.build_scheduler`). With
    `--resume_from_checkpoint` it first restores the checkpoint and continues
    at the exact sample where it stopped. Writes config.yaml, metrics.jsonl,
    checkpoints/, report.json/report.txt, model.safetensors and, last,
    summary.json. `data_notes` (for example how many bad files were left out)
    go into the banner and summary.json; `extra_metrics(predictions)` adds a
    recipe's own metrics to every evaluation (see framework.recipe.Recipe).
    `flops_per_sample` (framework.flops, counted by the caller on the main
    process) turns samples/s into a model FLOP rate and, on known GPUs, MFU.
    """
    wall_started = time.perf_counter()
    plan = train_data.plan
    total_steps = total_optimizer_steps(config, plan.windows_per_epoch)
    ctx = _Context(accelerator, config, model, optimizer, scheduler, train_data, eval_loader, class_names,
                   run_dir, loss_fn, total_steps, StopSignal(accelerator.num_processes),
                   [p for p in model.parameters() if p.requires_grad], extra_metrics, flops_per_sample)
    if accelerator.distributed_type == DistributedType.FSDP and (config.checkpoint_every or
                                                                 config.resume_from_checkpoint):
        # The optimizer state is sharded under FSDP and checkpoint.py saves it from the main process.
        raise UserError("--checkpointing_steps and --resume_from_checkpoint are not supported with FSDP yet; "
                        "use a DDP config (multi_gpu.yaml) to checkpoint")
    state = TrainState()
    path = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, note=lambda text: say(accelerator, text))
    if path is not None:
        state = load_checkpoint(accelerator, path, model=model, optimizer=optimizer, scheduler=scheduler,
                                identity=run_identity(plan, config.seed), state_type=TrainState)
        say(accelerator, f"resumed from {path} at optimizer step {state.step}")
        ctx.samples_at_start = state.samples_seen
    if config.auto_find_batch_size:
        choose_batch_sizes(accelerator, config, model, optimizer, train_data, eval_loader, loss_fn, state)
        plan = train_data.plan
    resolved = config_to_dict(config) | {"mixed_precision": precision.requested}
    run_dir.start(resolved, resume_step=state.step if path is not None else None)
    # Trackers take flat scalars and strings only (TensorBoard's hparams reject None).
    accelerator.init_trackers(run_dir.path.name or "run", config={k: "none" if v is None else v
                                                                   for k, v in resolved.items()})
    say(accelerator, format_banner(
        world_size=accelerator.num_processes, device=device_name(accelerator), precision=precision,
        micro_batch=plan.micro_batch, accumulation=plan.accumulation, effective_batch=plan.effective_batch,
        steps_per_epoch=plan.windows_per_epoch,
        total_steps=total_steps, train_samples=plan.num_samples, compiled=compile_description(accelerator),
        data_notes=data_notes))

    ctx.bar = progress_bar(total_steps, "train", accelerator.is_main_process, initial=state.step)
    try:
        with ctx.stop:
            while state.step < total_steps:
                ctx.bar.set_description(f"train epoch {state.epoch + 1}", refresh=False)
                train_epoch(ctx, state)
                if state.window >= plan.windows_per_epoch and not ctx.stopping:
                    state.epoch, state.window = state.epoch + 1, 0
                    if state.last_eval_step != state.step:
                        _evaluate(ctx, state)
                    if config.checkpoint_every == "epoch":
                        _checkpoint(ctx, state)
                if ctx.stopping:
                    _stop_with_checkpoint(ctx, state)
                if ctx.early_stopped:
                    say(accelerator, f"early stopping: {config.best_metric} did not improve for "
                                     f"{config.early_stopping_patience} evaluations (best {state.best_value:.6g} "
                                     f"at step {state.best_step}); stopped at step {state.step} of {total_steps}")
                    break
    finally:
        ctx.bar.close()
    if state.last_eval_step != state.step or ctx.report is None:
        _evaluate(ctx, state)
    if config.load_best_model_at_end:
        ctx.report, best_step = load_best(accelerator, model, config.output_dir)
        say(accelerator, f"best model: {config.best_metric} {state.best_value:.6g} at step {best_step} "
                         f"(--load_best_model_at_end)")

    say(accelerator, ctx.report.text)
    accelerator.wait_for_everyone()
    save_weights(accelerator, model, run_dir.path)
    run_dir.write_json("report.json", ctx.report.metrics)
    run_dir.write_text("report.txt", ctx.report.text)
    if accelerator.is_main_process:
        note = save_plots(run_dir.path, run_dir.records(), ctx.report.confusion, class_names)
        if note:
            say(accelerator, note)
    summary = {
        "world_size": accelerator.num_processes,
        "device": device_name(accelerator),
        "mixed_precision": precision.effective,
        "mixed_precision_requested": precision.requested,
        "per_device_train_batch_size": plan.micro_batch,
        "gradient_accumulation_steps": plan.accumulation,
        "effective_batch_size": plan.effective_batch,
        "optimizer_steps": state.step,
        "skipped_fp16_steps": state.skipped_steps,
        "train_samples": state.samples_seen,
        "train_samples_per_second": _samples_per_second(ctx, state, ctx.train_time),
        "train_time_s": ctx.train_time,
        "wall_time_s": time.perf_counter() - wall_started,
        "eval_accuracy": ctx.report.metrics["accuracy"],
        "auto_micro_batch": state.micro_batch or None,
        "auto_eval_batch": state.eval_batch or None,
        "torch_compile": compile_description(accelerator),
        **_flop_rates(ctx, state, precision),
        "gradient_checkpointing": config.gradient_checkpointing,
        "best_metric": config.best_metric or None,
        "best_step": state.best_step if config.best_metric else None,
        "best_value": state.best_value,
        "early_stopped": ctx.early_stopped,
        **_peak_memory(),
        **(data_notes or {}),
    }
    run_dir.write_json("summary.json", summary)
    accelerator.wait_for_everyone()
    return FitResult(ctx.report, summary, state, optimizer)

