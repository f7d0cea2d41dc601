"""Run-level features beside the loop, each one component with the same small hooks.

`fit` (framework.train.loop) calls every component's hooks, in list order:

    after_evaluation(run, state)        after each evaluation (its report is `run.report`)
    after_step(run, state, epoch_end)   after each optimizer step and its evaluation, if any
                                        (`epoch_end`: once more after an epoch's closing evaluation)
    stop_reason(state) -> str | None    after each evaluation: a reason to end training early
    finish(run, state)                  after the final evaluation, before the outputs are written
    summary(state) -> dict              entries for summary.json

A new run-level feature is a new component in `default_components`; `fit` does not change.
"""

from __future__ import annotations

from typing import Any, Optional

from framework.core.config import TrainingConfig
from framework.core.runtime import say
from framework.evaluate.best_model import improves, load_best, metric_value, save_best
from framework.io.checkpoint import run_identity, save_checkpoint, should_checkpoint
from framework.train.state import TrainingRun, TrainState


class Component:
    """A run-level feature; every hook does nothing unless a component overrides it."""

    def after_evaluation(self, run: TrainingRun, state: TrainState) -> None:
        """Called after each evaluation."""

    def after_step(self, run: TrainingRun, state: TrainState, epoch_end: bool) -> None:
        """Called after each optimizer step, and once more after an epoch's closing evaluation."""

    def stop_reason(self, state: TrainState) -> Optional[str]:
        """A reason to end training now, or None."""
        return None

    def finish(self, run: TrainingRun, state: TrainState) -> None:
        """Called after the final evaluation, before the outputs are written."""

    def summary(self, state: TrainState) -> dict[str, Any]:
        """Entries for summary.json."""
        return {}

    def checkpoint_parts(self, run: TrainingRun) -> dict[str, Any]:
        """Named parts of this component's state (each with `state_dict()` and `load_state_dict(state)`, holding
        tensors and plain containers) that every checkpoint keeps and a resume restores: EMA weights, say."""
        return {}


def checkpoint_parts(run: TrainingRun) -> dict[str, Any]:
    """What a checkpoint holds beside the weights, the RNGs and the train state, by name: the optimizer, the LR
    scheduler, the fp16 grad scaler (when there is one) and the components' own parts. A new part is one entry
    here or in a component's `checkpoint_parts`; framework.io.checkpoint saves and loads whatever it is given."""
    parts: dict[str, Any] = {"optimizer": run.optimizer, "scheduler": run.scheduler}
    if run.accelerator.scaler is not None:
        parts["scaler"] = run.accelerator.scaler
    for component in run.components:
        parts.update(component.checkpoint_parts(run))
    return parts


def write_checkpoint(run: TrainingRun, state: TrainState) -> None:
    """Save `checkpoints/step_<state.step>` (every process calls it)."""
    run.checkpointed_step = state.step
    save_checkpoint(run.accelerator, run.config.output_dir, model=run.model, parts=checkpoint_parts(run),
                    state=state,
                    identity=run_identity(run.train_data.plan, run.config, run.data_sources),
                    save_total_limit=run.config.save_total_limit)


class PeriodicCheckpoints(Component):
    """`--checkpointing_steps N` or `epoch`: a resumable checkpoint every N optimizer steps or epoch end."""

    def __init__(self, every: Optional[int | str]):
        self.every = every

    def after_step(self, run: TrainingRun, state: TrainState, epoch_end: bool) -> None:
        due = self.every == "epoch" if epoch_end else should_checkpoint(self.every, state.step)
        if due and run.checkpointed_step != state.step:
            write_checkpoint(run, state)


class BestModel(Component):
    """`--metric_for_best_model`, `--load_best_model_at_end`, `--early_stopping_patience`.

    Tracks the best evaluation (its step and value live in the train state, so they survive
    a resume), keeps its weights and report in output_dir/best when they are to be loaded at
    the end, and asks to stop after `patience` evaluations without an improvement larger than
    the threshold. The evaluation is gathered, so every process takes the same decisions.
    """

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.key = config.best_metric
        self.early_stopped = False

    def after_evaluation(self, run: TrainingRun, state: TrainState) -> None:
        if not self.key:
            return
        value = metric_value(run.report, self.key)
        if improves(value, state.best_value, self.key, self.config.early_stopping_threshold):
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        if improves(value, state.best_value, self.key):
            state.best_step, state.best_value = state.step, value
            if self.config.load_best_model_at_end:
                save_best(run.accelerator, run.model, run.report, self.config.output_dir, state.step, self.key)
        patience = self.config.early_stopping_patience
        self.early_stopped = bool(patience) and state.evals_without_improvement >= patience

    def stop_reason(self, state: TrainState) -> Optional[str]:
        if not self.early_stopped:
            return None
        return (f"early stopping: {self.key} did not improve for {self.config.early_stopping_patience} evaluations "
                f"(best {state.best_value:.6g} at step {state.best_step})")

    def finish(self, run: TrainingRun, state: TrainState) -> None:
        if self.config.load_best_model_at_end:
            run.report, best_step = load_best(run.accelerator, run.model, self.config.output_dir)
            say(run.accelerator, f"best model: {self.key} {state.best_value:.6g} at step {best_step} "
                                 f"(--load_best_model_at_end)")

    def summary(self, state: TrainState) -> dict[str, Any]:
        return {"best_metric": self.key or None, "best_step": state.best_step if self.key else None,
                "best_value": state.best_value, "early_stopped": self.early_stopped}


def default_components(config: TrainingConfig) -> list[Component]:
    """The run-level features every recipe gets."""
    return [BestModel(config), PeriodicCheckpoints(config.checkpoint_every)]
