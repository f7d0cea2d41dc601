"""The training loop: fit = setup -> train (train_epoch: one optimizer step per window) -> finish.

Run-level features (best model, early stopping, periodic checkpoints) are components
(framework.train.components) that the loop calls at fixed points; the loop itself
holds only the steps, the evaluations and the stop signal.

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
from typing import Any, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from framework.core.compilation import compile_description
from framework.core.config import config_to_dict
from framework.core.errors import Preempted, TrainingDiverged
from framework.core.progress import progress_bar
from framework.core.rng import capture_rng_state, restore_rng_state
from framework.core.runtime import device_name, format_banner, say
from framework.data.loaders import Window, to_device
from framework.evaluate.evaluation import EvaluationContext, EvaluationStopped, Report, evaluate, split_batch
from framework.evaluate.thresholds import calibrate_and_tune
from framework.io.checkpoint import checkpoint_root, load_checkpoint, resolve_checkpoint, run_identity
from framework.io.plots import save_plots
from framework.io.weights import bare_model, save_weights
from framework.train.batch_search import choose_batch_sizes
from framework.train.components import (
    Component,
    PeriodicCheckpoints,
    checkpoint_parts,
    default_components,
    write_checkpoint,
)
from framework.train.flops import peak_tflops
from framework.train.keyed_dropout import assign_layer_keys, keyed_samples, sample_keys
from framework.train.optim import total_optimizer_steps
from framework.train.preemption import StopSignal
from framework.train.sparse import clip_grad_norm_
from framework.train.state import LossFn, TrainingRun, TrainState

__all__ = ["FitResult", "LossFn", "NonFiniteLossError", "TrainState", "TrainingRun", "fit", "finish",
           "setup", "train", "train_epoch"]


class NonFiniteLossError(TrainingDiverged):
    """Training produced a NaN/inf loss, or too many fp16 steps in a row were skipped (exit code 3)."""


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
    model: Any = None  # the (prepared) model that trained


def _train_window(run: TrainingRun, window: Window, batches: Any, running: _Running, epoch: int) -> bool:
    """One optimizer step: forward and backward every micro-batch of `window`, clip, apply the update, step the
    schedule. Returns whether fp16 loss scaling skipped the update."""
    accelerator, model = run.accelerator, run.model
    scale = accelerator.num_processes / window.num_real
    last = len(window.micro_batches) - 1
    for j, batch in enumerate(batches):
        keys = batch.pop("dropout_keys", None)  # the loader's, where it hashes an epoch's at once
        if keys is None and run.keyed_dropout_layers:
            keys = sample_keys(batch["index"], run.config.seed, epoch)
        if keys is not None:  # made on the host, copied with the batch
            keys = keys.to(accelerator.device, non_blocking=True)
        batch = to_device(batch, accelerator.device)
        inputs, labels = split_batch(batch)
        with contextlib.nullcontext() if j == last else accelerator.no_sync(model), keyed_samples(keys):
            logits = model(**inputs)
            weighted = (run.loss_fn(logits.float(), labels) * batch["weight"]).sum()
            _backward(accelerator, weighted * scale)
        running.loss += weighted.detach()
    running.samples += window.num_real
    if run.config.max_grad_norm > 0:
        _clip_gradients(accelerator, run.params, run.config.max_grad_norm)
    skipped = _apply_update(run)
    if not skipped:
        run.scheduler.step()
    _zero_gradients(run)
    return skipped


_OWN_STEP = (DistributedType.XLA, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)


def _backward(accelerator: Accelerator, loss: torch.Tensor) -> None:
    """`accelerator.backward(loss)` without its division by `gradient_accumulation_steps`, which is 1 here (the
    loop weights each sample itself): one tensor op and one autograd node less per micro-batch, the same bits.
    Backends with their own backward (DeepSpeed, Megatron) keep Accelerate's."""
    if accelerator.distributed_type in _OWN_STEP:
        accelerator.backward(loss)
    elif accelerator.scaler is not None:
        accelerator.scaler.scale(loss).backward()
    else:
        loss.backward()


def _zero_gradients(run: TrainingRun) -> None:
    """`optimizer.zero_grad(set_to_none=True)`. Accelerate's wrapper looks up the wrapped method's signature
    (inspect.signature) on every call, about 0.1 ms a step on a CPU; with no accumulate() window open it then
    calls the wrapped optimizer's, as this does."""
    if run.accelerator.distributed_type in _OWN_STEP:
        run.optimizer.zero_grad(set_to_none=True)
    else:
        getattr(run.optimizer, "optimizer", run.optimizer).zero_grad(set_to_none=True)


def _clip_gradients(accelerator: Accelerator, params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Clip the global gradient norm, on unscaled fp16 gradients.

    Under DDP (or one process) the gradients are already the same everywhere, so
    torch's clipping rule is exact (framework.train.sparse's version of it also takes a
    table's sparse gradient); Accelerate's version adds a per-parameter DTensor scan each
    step. Sharded and special backends keep Accelerate's implementation.
    """
    if accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        accelerator.unscale_gradients()
        clip_grad_norm_(params, max_norm)
    else:
        accelerator.clip_grad_norm_(params, max_norm)


def _apply_update(run: TrainingRun) -> bool:
    """Apply the update; returns True when fp16 loss scaling found inf/NaN gradients and skipped it.

    `AcceleratedOptimizer.step` (accelerate 1.15) looks up whether the `lomo_optim`
    package is installed, through importlib, twice per call: about 0.4 ms per step
    on the CPU here, the bulk of the gap between a plain Accelerate loop and a raw one.
    Where it adds nothing (no XLA, no DeepSpeed) the wrapped optimizer is stepped here
    with the same GradScaler calls.
    """
    accelerator, optimizer = run.accelerator, run.optimizer
    if accelerator.distributed_type in _OWN_STEP:
        optimizer.step()
        return optimizer.step_was_skipped
    inner = getattr(optimizer, "optimizer", optimizer)
    scaler = accelerator.scaler
    if scaler is None:
        inner.step()
        return False
    if run.loss_scale is None:
        run.loss_scale = scaler.get_scale()
    scaler.step(inner)  # reads the inf/NaN flags on the host: the one sync fp16 needs per step
    scaler.update()
    # The scale backs off exactly when the step was skipped. Reading it right after the
    # sync above costs next to nothing, and it is the next step's starting scale.
    previous, run.loss_scale = run.loss_scale, scaler.get_scale()
    return run.loss_scale < previous


def _log_train(run: TrainingRun, state: TrainState, running: _Running, lr: float, started: float) -> None:
    """Reduce the running sums over processes (the one sync per logging interval) and log them."""
    # A sum is finite exactly when every term was (inf and NaN propagate), so one read checks them all.
    accelerator = run.accelerator
    loss_sum = (accelerator.reduce(running.loss, reduction="sum") if accelerator.num_processes > 1
                else running.loss).item()
    if not math.isfinite(loss_sum):
        raise NonFiniteLossError(
            f"the training loss was NaN or inf in the steps up to step {state.step}; lower --learning_rate, "
            f"check the data, or use --mixed_precision bf16/no")
    loss = loss_sum / max(running.samples, 1)
    epoch = _epochs_done(run, state)
    elapsed = run.train_time + time.perf_counter() - started  # after the reduce above, so the device is synced
    _log(run, {"step": state.step, "epoch": round(epoch, 4), "loss": loss, "lr": lr, "elapsed_s": elapsed})
    rate = _samples_per_second(run, state, elapsed)
    postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "samples/s": f"{rate:.0f}"}
    if run.flops_per_sample:
        postfix["TFLOP/s"] = f"{run.flops_per_sample * rate / 1e12:.3g}"
    if state.skipped_steps:
        postfix["skipped"] = state.skipped_steps
    run.bar.set_postfix(postfix, refresh=False)
    running.loss.zero_()
    running.samples = 0


def _samples_per_second(run: TrainingRun, state: TrainState, seconds: float) -> float:
    """Training throughput of this process's run (a resumed run counts from its resume)."""
    return (state.samples_seen - run.samples_at_start) / max(seconds, 1e-9)


def _log(run: TrainingRun, record: dict[str, Any]) -> None:
    """One metrics.jsonl line, and the same values to the --report_to trackers."""
    run.run_dir.log(record)
    run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def _evaluate(run: TrainingRun, state: TrainState, components: Sequence[Component], due: str = "") -> None:
    """Evaluate, log, tell the components. A stop signal agreed on during it abandons it on every process and
    stops with a checkpoint of this step that redoes it (`due`: where it was, see TrainState.evaluation_due)."""
    # The evaluation draws from the random stream (each DataLoader iterator takes a seed from it): the checkpoint
    # of an abandoned one keeps the stream as it was before it, so the resumed run, redoing it, draws alike.
    before = capture_rng_state()
    try:
        run.report = evaluate(run.accelerator, run.model, run.eval_loader, run.class_names, run.loss_fn,
                              forward_batch=state.eval_batch, extra_metrics=run.extra_metrics,
                              errors=run.config.save_errors, thresholds=run.thresholds,
                              should_stop=run.stop.agreed)
    except EvaluationStopped:
        restore_rng_state(before)
        state.evaluation_due = due
        run.stopping = True
        _stop_with_checkpoint(run, state, during_evaluation=True)
    state.last_eval_step = state.step
    epoch = _epochs_done(run, state)
    _log(run, {"step": state.step, "epoch": round(epoch, 4), **run.report.summary()})
    for component in components:
        component.after_evaluation(run, state)


def _epochs_done(run: TrainingRun, state: TrainState) -> float:
    """Epochs trained, with the finished part of the current one (whole epochs for a stream: its length is unknown)."""
    windows = run.train_data.plan.windows_per_epoch
    return state.epoch + state.window / windows if windows else float(state.epoch)


def _epoch_over(run: TrainingRun, state: TrainState) -> bool:
    """Whether the current epoch has no window left (a stream: whether its last read reached the end)."""
    windows = run.train_data.plan.windows_per_epoch
    return state.window >= windows if windows else run.train_data.epoch_ended


def _stop_reason(components: Sequence[Component], state: TrainState) -> Optional[str]:
    return next((reason for c in components if (reason := c.stop_reason(state))), None)


def train_epoch(run: TrainingRun, state: TrainState, components: Sequence[Component] = ()) -> None:
    """Train from `state.window` to the end of `state.epoch`, the last planned step, or an agreed stop."""
    config, accelerator = run.config, run.accelerator
    running = _Running(torch.zeros((), device=accelerator.device))
    run.model.train()
    started = time.perf_counter()
    for window, batches in run.train_data.epoch(state.epoch, state.window):
        if run.first_step_at is None:
            run.first_step_at = time.time()
        lr = run.scheduler.get_last_lr()[0]  # the lr this step applies
        skipped = _train_window(run, window, batches, running, state.epoch)
        state.step += 1
        state.window += 1
        state.samples_seen += window.num_real
        state.skipped_steps += skipped
        state.consecutive_skipped = state.consecutive_skipped + 1 if skipped else 0
        if state.consecutive_skipped > config.max_consecutive_skipped_steps:
            raise NonFiniteLossError(
                f"{state.consecutive_skipped} fp16 steps in a row were skipped for inf/NaN gradients "
                f"(limit --max_consecutive_skipped_steps {config.max_consecutive_skipped_steps})")
        run.bar.update(1)
        done = state.step >= run.total_steps
        if state.step % config.logging_steps == 0 or done:
            _log_train(run, state, running, lr, started)
        run.train_time += time.perf_counter() - started  # evaluations and checkpoints are not training time
        if _after_step(run, state, components, evaluate=bool(config.eval_steps) and state.step % config.eval_steps == 0):
            break
        started = time.perf_counter()
        if done:
            break
        if run.stop.agreed():  # every process calls it once per step, so all agree on this step
            run.stopping = True
            break
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    run.train_time += time.perf_counter() - started


def _after_step(run: TrainingRun, state: TrainState, components: Sequence[Component], evaluate: bool) -> bool:
    """What follows an optimizer step (in train_epoch, and in a resumed run that redoes an evaluation a stop
    abandoned there): the evaluation --eval_steps asks for, then the components' step hooks, which do not run
    when a component asked to stop in that evaluation. Returns whether one did."""
    if evaluate:
        _evaluate(run, state, components, due="step")
        if _stop_reason(components, state):
            return True
    for component in components:
        component.after_step(run, state, epoch_end=False)
    return False


def _after_epoch(run: TrainingRun, state: TrainState, components: Sequence[Component], evaluate: bool) -> None:
    """What follows an epoch's last step: its evaluation (unless that step had one), the components' epoch hooks."""
    if evaluate:
        _evaluate(run, state, components, due="epoch")
    for component in components:
        component.after_step(run, state, epoch_end=True)


def _stop_with_checkpoint(run: TrainingRun, state: TrainState, during_evaluation: bool = False) -> None:
    """A stop signal was agreed on: write one complete checkpoint (unless this step has one: written before the
    evaluation, or the one this run resumed from; either redoes the evaluation) and stop."""
    what = f"{run.stop.received} received" if run.stop.received else "a stop signal received by another process"
    if during_evaluation:
        what += " during the evaluation (abandoned: the resumed run redoes it)"
    if run.checkpointed_step != state.step:
        write_checkpoint(run, state)
    raise Preempted(f"{what}: stopped after optimizer step {state.step} of {run.total_steps} and saved "
                    f"{checkpoint_root(run.config.output_dir) / f'step_{state.step}'}; run the same command with "
                    f"--resume_from_checkpoint auto to continue")


def _flop_rates(run: TrainingRun, state: TrainState) -> dict[str, Optional[float]]:
    """Model FLOPs per sample, the FLOP rate of the whole job, and MFU against the cards' dense peak."""
    if not run.flops_per_sample:
        return {"model_flops_per_sample": None, "model_tflops_per_second": None, "mfu": None}
    tflops = run.flops_per_sample * _samples_per_second(run, state, run.train_time) / 1e12
    peak = peak_tflops(device_name(run.accelerator), run.precision.effective)
    return {"model_flops_per_sample": run.flops_per_sample, "model_tflops_per_second": tflops,
            "mfu": tflops / (peak * run.accelerator.num_processes) if peak else None}


def _peak_memory() -> dict[str, Optional[float]]:
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "peak_host_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


DATA_BOUND_SHARE = 0.5  # above this share of the training time spent waiting for data, say so (digits on a CPU: 0.44)


def _data_wait_share(run: TrainingRun) -> Optional[float]:
    """The share of this process's training time spent waiting for micro-batches, with one note when it is large."""
    if run.train_time <= 0:
        return None
    share = min(run.train_data.wait_seconds / run.train_time, 1.0)
    if share > DATA_BOUND_SHARE:
        workers = run.train_data.num_workers
        say(run.accelerator, f"note: {share:.0%} of the training time went to waiting for data (the run is "
                             f"data-bound): try more --dataloader_num_workers (now {workers}), a cheaper "
                             f"augmentation or collate function, or data prepared in advance")
    return share


def _since_process_start(moment: Optional[float]) -> Optional[float]:
    """Seconds from this process's start (interpreter, imports, data preparation, setup) to `moment`."""
    if moment is None:
        return None
    import psutil  # an Accelerate dependency

    return moment - psutil.Process().create_time()


def setup(run: TrainingRun) -> TrainState:
    """Plan the steps, resume from a checkpoint, search the batch sizes, start the outputs, print the banner."""
    accelerator, config = run.accelerator, run.config
    run.total_steps = total_optimizer_steps(config, run.train_data.plan.windows_per_epoch)
    run.stop = StopSignal(accelerator.num_processes, config.ddp_timeout)
    run.params = [p for p in run.model.parameters() if p.requires_grad]
    # Keyed by the names in the bare model: the same on 1 process and under DDP's or compile's wrapper.
    run.keyed_dropout_layers = assign_layer_keys(bare_model(accelerator, run.model))
    if run.keyed_dropout_layers and hasattr(run.train_data, "dropout_keys_seed"):  # a stream's data hashes none
        run.train_data.dropout_keys_seed = config.seed  # the loader then hashes an epoch's keys at once
    state = TrainState()
    path = resolve_checkpoint(config.resume_from_checkpoint, config.output_dir, note=lambda t: say(accelerator, t))
    if path is not None:
        state = load_checkpoint(accelerator, path, model=run.model, parts=checkpoint_parts(run),
                                identity=run_identity(run.train_data.plan, config, run.data_sources),
                                state_type=TrainState)
        say(accelerator, f"resumed from {path} at optimizer step {state.step}")
        run.samples_at_start = state.samples_seen
        run.checkpointed_step = state.step  # this step has its checkpoint: the one resumed from
    if config.auto_find_batch_size:
        choose_batch_sizes(accelerator, config, run.model, run.optimizer, run.train_data, run.eval_loader,
                           run.loss_fn, state)
    resolved = config_to_dict(config) | {"mixed_precision": run.precision.requested}
    if run.data_sources:
        resolved["data_sources"] = run.data_sources
    run.run_dir.start(resolved, resume_step=state.step if path is not None else None)
    # Trackers take flat scalars and strings only (TensorBoard's hparams reject None).
    accelerator.init_trackers(run.run_dir.path.name or "run",
                              config={k: "none" if v is None else v for k, v in resolved.items()})
    plan = run.train_data.plan
    say(accelerator, format_banner(
        world_size=accelerator.num_processes, device=device_name(accelerator), precision=run.precision,
        micro_batch=plan.micro_batch, accumulation=plan.accumulation, effective_batch=plan.effective_batch,
        steps_per_epoch=plan.windows_per_epoch, total_steps=run.total_steps, train_samples=plan.num_samples,
        compiled=compile_description(accelerator), data_notes=run.data_notes or None,
        preparation_s=run.preparation_s, loader=(run.train_data.num_workers, run.train_data.workers_note)))
    run.bar = progress_bar(run.total_steps, "train", accelerator.is_main_process, initial=state.step)
    return state


def train(run: TrainingRun, state: TrainState, components: Sequence[Component]) -> None:
    """Epochs until the planned steps are done, a component asks to stop, or a stop signal is agreed on."""
    if state.evaluation_due and _redo_abandoned_evaluation(run, state, components):
        return
    while state.step < run.total_steps:
        run.bar.set_description(f"train epoch {state.epoch + 1}", refresh=False)
        train_epoch(run, state, components)
        if _after_epoch_part(run, state, components):
            break


def _after_epoch_part(run: TrainingRun, state: TrainState, components: Sequence[Component]) -> bool:
    """What follows train_epoch: the epoch's end (evaluation, hooks), an agreed stop, a component's stop.
    Returns whether training is over."""
    if _epoch_over(run, state) and not run.stopping:
        state.epoch, state.window = state.epoch + 1, 0
        _after_epoch(run, state, components, evaluate=state.last_eval_step != state.step)
    if run.stopping:
        _stop_with_checkpoint(run, state)
    reason = _stop_reason(components, state)
    if reason:
        say(run.accelerator, f"{reason}; stopped at step {state.step} of {run.total_steps}")
        return True
    return False


def _redo_abandoned_evaluation(run: TrainingRun, state: TrainState, components: Sequence[Component]) -> bool:
    """A resumed run whose checkpoint was written when a stop signal abandoned an evaluation: redo it and what
    followed it in the uninterrupted run (train_epoch's step hooks, or the epoch end's), so that the run ends as
    that one would. Returns whether training is over."""
    due, state.evaluation_due = state.evaluation_due, ""
    if due == "epoch":
        _after_epoch(run, state, components, evaluate=True)
        reason = _stop_reason(components, state)
        if reason:
            say(run.accelerator, f"{reason}; stopped at step {state.step} of {run.total_steps}")
        return bool(reason)
    stopped = _after_step(run, state, components, evaluate=True)
    if stopped or state.step >= run.total_steps:  # train_epoch would have returned here
        return _after_epoch_part(run, state, components) or state.step >= run.total_steps
    return False


def finish(run: TrainingRun, state: TrainState, components: Sequence[Component]) -> FitResult:
    """The final evaluation, the components' last word, then weights, reports, plots and summary.json."""
    accelerator, plan = run.accelerator, run.train_data.plan
    if state.last_eval_step != state.step or run.report is None:
        _evaluate(run, state, components)
    for component in components:
        component.finish(run, state)
    context = EvaluationContext(accelerator, run.model, run.eval_loader, run.class_names, run.loss_fn,
                                run.run_dir.path, run.config.multi_label, run.extra_metrics, run.config.save_errors,
                                state.eval_batch)
    run.temperature, run.thresholds, run.report = calibrate_and_tune(
        context, run.report, calibrate=run.config.calibrate, tune=run.config.decision_threshold == "auto",
        temperature=run.temperature, thresholds=run.thresholds)
    say(accelerator, run.report.text)
    save_weights(accelerator, run.model, run.run_dir.path)
    run.run_dir.write_report(run.report)
    if accelerator.is_main_process:
        note = save_plots(run.run_dir.path, run.run_dir.records(), run.report.confusion, run.class_names,
                          run.report.metrics.get("calibration"))
        if note:
            say(accelerator, note)
    summary = {
        "world_size": accelerator.num_processes, "device": device_name(accelerator),
        "mixed_precision": run.precision.effective, "mixed_precision_requested": run.precision.requested,
        "per_device_train_batch_size": plan.micro_batch, "gradient_accumulation_steps": plan.accumulation,
        "effective_batch_size": plan.effective_batch, "optimizer_steps": state.step,
        "skipped_fp16_steps": state.skipped_steps, "train_samples": state.samples_seen,
        "train_samples_per_second": _samples_per_second(run, state, run.train_time),
        "train_time_s": run.train_time, "wall_time_s": time.perf_counter() - run.started,
        "eval_accuracy": run.report.metrics["accuracy"], "auto_micro_batch": state.micro_batch or None,
        "auto_eval_batch": state.eval_batch or None, "torch_compile": compile_description(accelerator),
        **_flop_rates(run, state), "gradient_checkpointing": run.config.gradient_checkpointing,
        **{k: v for c in components for k, v in c.summary(state).items()}, **_peak_memory(), **run.data_notes,
    }
    summary["data_wait_share"] = _data_wait_share(run)
    summary["preparation_time_s"] = run.preparation_s
    summary["dataloader_num_workers"] = run.train_data.num_workers
    summary["calibration_temperature"] = run.temperature
    summary["problem_type"] = run.config.problem_type
    summary["decision_thresholds"] = run.report.metrics.get("decision_thresholds")
    summary["time_to_first_step_s"] = _since_process_start(run.first_step_at)
    summary["keyed_dropout_layers"] = run.keyed_dropout_layers
    run.run_dir.write_json("summary.json", summary)
    accelerator.wait_for_everyone()
    return FitResult(run.report, summary, state, run.optimizer, run.model)


def fit(run: TrainingRun, components: Optional[Sequence[Component]] = None) -> FitResult:
    """Train to the planned number of steps, evaluating at each epoch end (and every eval_steps).

    With `--resume_from_checkpoint` it first restores the checkpoint and continues at the
    exact sample where it stopped. Writes config.yaml, metrics.jsonl, checkpoints/,
    report.json/report.txt, model.safetensors, the plots and, last, summary.json.
    `components` default to `default_components(run.config)`.
    """
    run.started = time.perf_counter()
    components = default_components(run.config) if components is None else components
    # Checkpoints are written last after a step, so that they hold every other component's state of that step.
    components = sorted(components, key=lambda c: isinstance(c, PeriodicCheckpoints))
    run.components = components  # their checkpoint parts are saved and restored with the run's
    state = setup(run)
    # The stop signal is agreed on through the final evaluation too; one arriving after it (while the weights,
    # reports and summary are written) lets the run finish, and then stops it before anything that follows.
    with run.stop:
        try:
            train(run, state, components)
        finally:
            run.bar.close()
        result = finish(run, state, components)
        if run.stop.agreed_now():
            what = run.stop.received or "a stop signal on another process"
            raise Preempted(f"{what} received as the run finished: it is complete ({run.config.output_dir}: "
                            f"model.safetensors, report.json, summary.json); what follows training (--do_predict) "
                            f"did not run: run it with --model_path {run.config.output_dir} --do_train false")
    return result
