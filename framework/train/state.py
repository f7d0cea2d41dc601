"""What a training run works with (`TrainingRun`) and where it stands (`TrainState`).

`TrainingRun` is built by the runner (framework.run) from prepared parts and
handed to `fit`; the loop and the components (framework.train.components) read it
and keep their running values in its last fields. `TrainState` is what a checkpoint
saves: everything needed to continue at the exact sample where a run stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from accelerate import Accelerator

from framework.core.config import TrainingConfig
from framework.core.runtime import Precision
from framework.data.loaders import TrainData
from framework.evaluate.evaluation import ExtraMetrics, Report
from framework.io.run_directory import RunDirectory

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, labels) -> per-sample losses


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
    # An evaluation a stop signal abandoned at this step, to redo first on resume: "step" (--eval_steps) or
    # "epoch" (the epoch's end); "" when none (the final evaluation is redone by finish anyway).
    evaluation_due: str = ""
    best_step: int = -1  # the best evaluation so far (--metric_for_best_model), and its value
    best_value: Optional[float] = None
    evals_without_improvement: int = 0
    micro_batch: int = 0  # chosen by --auto_find_batch_size (0: not searched); reused on resume
    eval_batch: int = 0  # evaluation forward batch chosen by --auto_find_batch_size (0: not searched)


@dataclass
class TrainingRun:
    """The prepared parts of one training run, and the loop's running values (the fields with defaults).

    `model`, `optimizer` and `eval_loader` are prepared by Accelerate; `scheduler` is not
    (see framework.train.optim.build_scheduler); `loss_fn` returns one loss per sample.
    """

    accelerator: Accelerator
    config: TrainingConfig
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    train_data: TrainData
    eval_loader: Any
    class_names: Sequence[str]
    precision: Precision
    run_dir: RunDirectory
    loss_fn: LossFn
    extra_metrics: Optional[ExtraMetrics] = None
    flops_per_sample: Optional[float] = None  # model FLOPs of one sample's forward and backward
    data_notes: dict[str, Any] = field(default_factory=dict)  # into the banner and summary.json
    preparation_s: Optional[float] = None  # loading and preparing the data and the model, before fit
    # running values
    total_steps: int = 0
    stop: Any = None  # framework.train.preemption.StopSignal
    params: list = field(default_factory=list)
    keyed_dropout_layers: int = 0  # KeyedDropout modules in the model (setup counts them)
    loss_scale: Optional[float] = None  # fp16 GradScaler scale after the last step
    samples_at_start: int = 0  # samples seen before this process started (non-zero after a resume)
    bar: Any = None
    report: Optional[Report] = None
    train_time: float = 0.0
    stopping: bool = False  # all processes agreed to stop (a stop signal arrived)
    checkpointed_step: int = -1
    started: float = 0.0  # perf_counter() when fit began (wall_time_s)
    first_step_at: Optional[float] = None  # time.time() when this run's first optimizer step began
    temperature: Optional[float] = None  # --calibrate: the fitted temperature
    # --decision_threshold: a fixed value's thresholds from the start; auto's, fitted after training
    thresholds: Any = None
    data_sources: dict = field(default_factory=dict)  # flag -> {"path", "sha256"}: what the run reads (config.yaml)
    components: list = field(default_factory=list)  # the run-level features fit runs (framework.train.components)
