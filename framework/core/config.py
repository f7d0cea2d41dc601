"""Recipe configuration: a dataclass of hyperparameters, turned into CLI flags.

A recipe subclasses `TrainingConfig` and adds its own fields. `parse_config`
reads, in increasing order of precedence: the dataclass defaults, an optional
YAML file given with `--config FILE`, then `--name value` flags. Every value is
type-checked and range-checked; a bad one raises `ConfigError` with one line
naming the flag and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from framework.core.errors import ConfigError

PRECISIONS = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRACKERS = ("tensorboard", "wandb", "trackio", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab")


def metric_key(name: str) -> str:
    """`accuracy` or `eval_accuracy` -> `eval_accuracy` (the key in metrics.jsonl)."""
    return name if name.startswith("eval_") else f"eval_{name}"


def flag(text: str, **kwargs: Any) -> Any:
    """A dataclass field with `--help` text: `dropout: float = flag("Dropout before the head.", default=0.1)`."""
    return field(metadata={"help": text}, **kwargs)


@dataclass
class OutputFlags:
    """Where the run writes."""

    output_dir: str = flag("Where config, metrics, report, summary and weights are written.", default="outputs/run")
    overwrite_output_dir: bool = flag("Allow writing into an output_dir that holds a finished run.", default=False)

    def check_output(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("output_dir", bool(self.output_dir.strip()), "a non-empty path")


@dataclass
class BatchFlags:
    """How samples are batched: micro-batch, accumulation, the effective batch, and loading."""

    per_device_train_batch_size: int = flag("Micro-batch size on each process.", default=32)
    per_device_eval_batch_size: int = flag("Evaluation batch size on each process.", default=128)
    gradient_accumulation_steps: int = flag("Micro-batches accumulated into one optimizer step.", default=1)
    dataloader_num_workers: str = flag(
        "DataLoader worker processes per training process: auto (on CUDA, this process's share of the node's cores "
        "less one, at most 8, for a training set of 10,000 samples or more; otherwise 0) or a number.",
        default="auto")
    total_train_batch_size: int = flag(
        "Effective batch over all processes; 0 means micro-batch x accumulation x processes. When set, "
        "accumulation follows from it.", default=0)
    auto_find_batch_size: bool = flag(
        "Search for the largest micro-batch (up to per_device_train_batch_size) that fits in memory; "
        "accumulation grows so the effective batch stays the same. The evaluation batch is searched too.",
        default=False)
    max_memory_gib: float = flag("Cap this process's CUDA memory (emulates a smaller GPU); 0 = no cap.",
                                 default=0.0)

    def check_batch(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            require(name, getattr(self, name) >= 1, "an integer >= 1")
        workers = self.dataloader_num_workers
        require("dataloader_num_workers", workers == "auto" or workers.isdigit(), "auto or an integer >= 0")
        require("total_train_batch_size", self.total_train_batch_size >= 0, "an integer >= 0")
        require("gradient_accumulation_steps", not self.total_train_batch_size or self.gradient_accumulation_steps == 1,
                "left at 1 when --total_train_batch_size is set (accumulation then follows from it)")
        require("max_memory_gib", math.isfinite(self.max_memory_gib) and self.max_memory_gib >= 0,
                "a finite number >= 0")


@dataclass
class OptimizationFlags:
    """What the optimizer does: its kind and rate, the schedule, the loss, the seed."""

    optim: str = flag("Optimizer: adamw (torch's AdamW) or sgd (SGD with --momentum).", default="adamw")
    momentum: float = flag("--optim sgd: momentum, in [0, 1).", default=0.9)
    learning_rate: float = flag("Peak learning rate of the optimizer.", default=1e-3)
    weight_decay: float = flag("Weight decay of the weight matrices (not biases and norms): decoupled with adamw, "
                               "an L2 term of the gradient with sgd.", default=0.0)
    num_train_epochs: int = flag("Passes over the training set (ignored when max_steps > 0).", default=3)
    max_steps: int = flag("Total optimizer steps; -1 means num_train_epochs decides.", default=-1)
    warmup_steps: int = flag("Optimizer steps of linear warmup from 0 to learning_rate; when > 0 it wins over "
                             "warmup_ratio.", default=0)
    warmup_ratio: float = flag("Fraction of the planned optimizer steps spent in linear warmup (rounded up), "
                               "so short and long runs warm up alike.", default=0.0)
    lr_scheduler_type: str = flag(
        "Learning-rate schedule (Hugging Face names): linear or cosine (warmup, then decay to 0), "
        "constant_with_warmup, or constant (no warmup).", default="linear")
    class_weights: str = flag("Weigh each class's samples in the loss: 'balanced' (n / (classes x count)) or a "
                              "comma list, one number per class; empty: all 1.", default="")
    label_smoothing: float = flag("Label smoothing of the cross entropy, in [0, 1).", default=0.0)
    max_grad_norm: float = flag("Clip the global gradient norm to this value; 0 disables clipping.", default=1.0)
    seed: int = flag("Seed for model init, data order and dropout.", default=42)

    def check_optimization(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("num_train_epochs", self.num_train_epochs >= 1, "an integer >= 1")
        require("warmup_steps", self.warmup_steps >= 0, "an integer >= 0")
        require("max_steps", self.max_steps == -1 or self.max_steps >= 1, "-1 (use epochs) or an integer >= 1")
        require("optim", self.optim in OPTIMIZERS, " or ".join(OPTIMIZERS))
        require("momentum", math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0, "a number in [0, 1)")
        require("learning_rate", math.isfinite(self.learning_rate) and self.learning_rate > 0, "a finite number > 0")
        for name in ("weight_decay", "max_grad_norm"):
            value = getattr(self, name)
            require(name, math.isfinite(value) and value >= 0, "a finite number >= 0")
        require("warmup_ratio", math.isfinite(self.warmup_ratio) and 0.0 <= self.warmup_ratio < 1.0,
                "a number in [0, 1)")
        require("label_smoothing", math.isfinite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0,
                "a number in [0, 1)")
        require("lr_scheduler_type", self.lr_scheduler_type in SCHEDULERS, "one of " + ", ".join(SCHEDULERS))


@dataclass
class EvaluationFlags:
    """When to log and evaluate, where metrics go, and which evaluation is the best."""

    logging_steps: int = flag("Log loss and lr every N optimizer steps.", default=10)
    eval_steps: int = flag("Also evaluate every N optimizer steps; 0 means only at the end of each epoch.", default=0)
    report_to: str = flag(
        "Experiment trackers beside metrics.jsonl: none, all, or a comma list such as tensorboard,wandb.",
        default="none")
    metric_for_best_model: str = flag(
        "Track the best evaluation by this metric (eval_loss, eval_accuracy, eval_macro_f1, eval_weighted_f1, or a "
        "recipe's own eval_<name>; the eval_ prefix may be left out). Loss-like metrics are minimised. Default with "
        "--load_best_model_at_end or --early_stopping_patience: eval_loss.", default="")
    load_best_model_at_end: bool = flag(
        "End with the best evaluation's weights and report (model.safetensors, report.json) instead of the last.",
        default=False)
    early_stopping_patience: int = flag(
        "Stop training after this many evaluations in a row without improvement of the tracked metric; 0 = off.",
        default=0)
    early_stopping_threshold: float = flag(
        "How much the tracked metric must improve to count as an improvement.", default=0.0)
    save_errors: int = flag("Rows of errors.csv: the evaluation samples the model got wrong with the most "
                            "confidence, most confident first; 0 writes no file.", default=100)
    calibrate: bool = flag("Fit a temperature on the evaluation split after training (temperature scaling): the "
                           "probabilities in the report and predictions.csv become calibrated, the predicted classes "
                           "do not change; saved as calibration.json and used by --model_path.", default=False)

    def check_evaluation(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("logging_steps", self.logging_steps >= 1, "an integer >= 1")
        require("eval_steps", self.eval_steps >= 0, "an integer >= 0")
        for name in self.trackers:
            require("report_to", name in TRACKERS, f"none, all, or a comma list of {', '.join(TRACKERS)}",
                    given=name)
        require("early_stopping_patience", self.early_stopping_patience >= 0, "an integer >= 0")
        require("save_errors", self.save_errors >= 0, "an integer >= 0")
        require("early_stopping_threshold", math.isfinite(self.early_stopping_threshold) and
                self.early_stopping_threshold >= 0, "a finite number >= 0")

    @property
    def best_metric(self) -> str:
        """The eval_* key tracked for the best model / early stopping, or "" when neither is asked for."""
        if self.metric_for_best_model:
            return metric_key(self.metric_for_best_model)
        return "eval_loss" if self.load_best_model_at_end or self.early_stopping_patience else ""

    @property
    def trackers(self) -> list[str]:
        """`report_to` as a list of tracker names ([] for none)."""
        names = [n.strip() for n in self.report_to.split(",") if n.strip()]
        if names == ["all"]:
            return list(TRACKERS)
        return [] if names == ["none"] else names


@dataclass
class RuntimeFlags:
    """How the step runs: precision, compilation, activation recomputation."""

    mixed_precision: Optional[str] = flag(
        "no, fp16 or bf16; default: the launcher config's value, else fp16 on CUDA and no on CPU.", default=None
    )
    max_consecutive_skipped_steps: int = flag(
        "Stop when this many fp16 steps in a row are skipped for inf/NaN gradients.", default=50
    )
    torch_compile: bool = flag(
        "Compile the model with torch.compile (TorchInductor) through Accelerate; the first steps are slower.",
        default=False)
    torch_compile_mode: Optional[str] = flag(
        "torch.compile mode: default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs "
        "(implies --torch_compile).", default=None)
    gradient_checkpointing: bool = flag(
        "Recompute each block's activations in the backward pass instead of keeping them: much less activation "
        "memory (a larger micro-batch fits) for about a third more compute; the math is unchanged.", default=False)

    ddp_timeout: int = flag(
        "Seconds a collective (the gradient all-reduce, a gather, a barrier) waits for the other processes before the "
        "job ends with one line saying a process stalled or died (Hugging Face's name and default).", default=1800)

    def check_runtime(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("ddp_timeout", self.ddp_timeout >= 1, "an integer >= 1 (seconds)")
        require("max_consecutive_skipped_steps", self.max_consecutive_skipped_steps >= 1, "an integer >= 1")
        require("mixed_precision", self.mixed_precision in (None, *PRECISIONS), "one of " + ", ".join(PRECISIONS))
        require("torch_compile_mode", self.torch_compile_mode in (None, *COMPILE_MODES),
                "one of " + ", ".join(COMPILE_MODES))


@dataclass
class CheckpointFlags:
    """Resumable checkpoints: how often, how many, and where to resume from."""

    checkpointing_steps: str = flag(
        "Save a resumable checkpoint every N optimizer steps, or 'epoch', or 'no'.", default="no")
    save_total_limit: int = flag("Keep only the newest K checkpoints; 0 keeps all.", default=0)
    resume_from_checkpoint: Optional[str] = flag(
        "Continue a run: 'auto' (the newest complete checkpoint in output_dir if there is one, else start "
        "fresh: one command for a first run and every requeue), 'latest' (the newest, which must exist) or a "
        "checkpoint folder.", default=None)


    def check_checkpoint(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        every = self.checkpointing_steps
        require("checkpointing_steps", every in ("no", "epoch") or (every.isdigit() and int(every) >= 1),
                "'no', 'epoch' or an integer >= 1")
        require("save_total_limit", self.save_total_limit >= 0, "an integer >= 0")

    @property
    def checkpoint_every(self) -> Optional[int | str]:
        """`checkpointing_steps` as an int N, 'epoch', or None when off."""
        every = self.checkpointing_steps
        return None if every == "no" else every if every == "epoch" else int(every)


@dataclass
class TaskFlags:
    """What the run does: train, evaluate, predict, and with which trained model."""

    do_train: bool = flag("Train (false: only evaluate and/or predict with the model of --model_path).",
                          default=True)
    do_eval: bool = flag("Evaluate on the evaluation split (after training, or the --model_path model).",
                         default=True)
    do_predict: bool = flag("Write predictions.csv for the recipe's test inputs (--test_file, --test_dir, ...).",
                            default=False)
    model_path: str = flag("Start from a trained model: a finished run's output_dir or one of its checkpoint "
                           "folders (weights, class names, preprocessing and model flags come from it).",
                           default="")

    def check_task(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("do_eval", self.do_eval or not self.do_train,
                "true when --do_train is true (training evaluates at each epoch end)")
        require("model_path", self.do_train or bool(self.model_path),
                "given when --do_train is false (the run to evaluate or predict with)")
        require("do_predict", self.do_train or self.do_eval or self.do_predict,
                "true when --do_train and --do_eval are false (there is nothing else to do)")


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


@dataclass
class LabelFlags:
    """What a label is (one class, or a set of labels per sample) and how a prediction is decided."""

    problem_type: str = flag(
        "single_label_classification (one class per sample: softmax and cross entropy) or "
        "multi_label_classification (a set of labels per sample, possibly several: a sigmoid per label and "
        "binary cross entropy; labels as lists, or strings split at --label_delimiter).",
        default="single_label_classification")
    label_delimiter: str = flag("Multi-label: the separator of labels in a string label column, e.g. "
                                "'news,sports' (a JSON list column needs none).", default=",")
    decision_threshold: str = flag(
        "Binary and multi-label runs: the probability from which a class (a label) is predicted: a number in "
        "(0, 1), or auto (per label, the threshold of best F1 on the evaluation split, saved with the model and "
        "used by --do_predict and --model_path); empty: 0.5 (binary: the most probable class).", default="")

    @property
    def multi_label(self) -> bool:
        """Whether a sample has a set of labels (--problem_type multi_label_classification)."""
        return self.problem_type == "multi_label_classification"

    @property
    def fixed_threshold(self) -> Optional[float]:
        """--decision_threshold as a number, or None (empty or auto)."""
        return float(self.decision_threshold) if self.decision_threshold not in ("", "auto") else None

    def check_labels(self) -> None:
        """Raise `InvalidFlag` for the first value of this group outside its allowed range."""
        require("problem_type", self.problem_type in PROBLEM_TYPES, " or ".join(PROBLEM_TYPES))
        require("label_delimiter", bool(self.label_delimiter.strip()), "a non-blank separator such as , or |")
        threshold = self.decision_threshold
        if threshold not in ("", "auto"):
            try:
                value = float(threshold)
            except ValueError:
                value = math.nan
            require("decision_threshold", math.isfinite(value) and 0.0 < value < 1.0,
                    "auto, empty, or a number in (0, 1)")


@dataclass
class TrainingConfig(TaskFlags, LabelFlags, CheckpointFlags, RuntimeFlags, EvaluationFlags, OptimizationFlags,
                     BatchFlags, OutputFlags):
    """Hyperparameters shared by every recipe (names follow HF `TrainingArguments`), in groups that check
    themselves; a recipe subclasses it with its own fields and `validate` (calling super().validate())."""

    def fill_defaults(self) -> None:
        """Give flags left unset the defaults that depend on other flags (a recipe's per-model defaults); called
        before `validate`, which only checks. Nothing to fill here."""

    def validate(self) -> None:
        """Raise `InvalidFlag` (a `ConfigError` once parsed) for the first value outside its allowed range: each
        group checks its own flags, then the checks that span groups."""
        self.check_output()
        self.check_batch()
        self.check_optimization()
        self.check_evaluation()
        self.check_runtime()
        self.check_checkpoint()
        self.check_task()
        self.check_labels()
        self.check_across_groups()

    def check_across_groups(self) -> None:
        """The checks that involve flags of several groups, in one place."""
        require("calibrate", not self.calibrate or self.do_eval,
                "false when --do_eval is false (the temperature is fitted on the evaluation split)")
        if self.multi_label:
            require("label_smoothing", self.label_smoothing == 0.0, "0 with --problem_type "
                    "multi_label_classification (a multi-label loss has no label smoothing)")
            require("class_weights", not self.class_weights, "empty with --problem_type multi_label_classification "
                    "(each label is its own binary decision)")
            require("calibrate", not self.calibrate, "false with --problem_type multi_label_classification "
                    "(temperature scaling is fitted to single-label probabilities)")


_VALUE = object()  # require(): name the flag's whole value


class InvalidFlag(ConfigError):
    """`--name must be <allowed>`; parse_config adds `, got <value>` (the flag's value, or the part named)."""

    def __init__(self, name: str, allowed: str, given: Any):
        super().__init__(f"--{name} must be {allowed}")
        self.name, self.given = name, given


def require(name: str, ok: bool, allowed: str, given: Any = _VALUE) -> None:
    """Raise `ConfigError` saying `--name must be <allowed>, got <value>` unless `ok`; `given` names the offending
    part of a composite value (one item of a list, say) instead of the whole."""
    if not ok:
        raise InvalidFlag(name, allowed, given)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for `X` or `Optional[X]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NUMBERS = {int: ((int,), "an integer"), float: ((int, float), "a number")}  # type -> (accepted YAML types, noun)


def _convert(name: str, raw: Any, annotation: Any) -> Any:
    """Convert a CLI string or YAML value to the field's type, or raise ConfigError."""
    kind, optional = _unwrap_optional(annotation)
    if optional and (raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null"))):
        return None
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"--{name} must be true or false, got {raw!r}")
    if kind in _NUMBERS:
        accepted, noun = _NUMBERS[kind]
        if isinstance(raw, accepted) and not isinstance(raw, bool):
            return kind(raw)
        if isinstance(raw, str):
            try:
                return kind(raw)
            except ValueError:
                pass
        raise ConfigError(f"--{name} must be {noun}, got {raw!r}")
    if kind is str:
        if isinstance(raw, str):
            return raw
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise ConfigError(f"--{name} must be a string, got {raw!r}")
    raise TypeError(f"config field {name} has unsupported type {annotation!r}")


def _unknown(what: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean --{close[0]}? " if close else ""
    return ConfigError(f"unknown {what} ({hint}run with --help to list the allowed flags)")


def _load_yaml(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config file {path!r} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"--config file {path!r} is not valid YAML{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {path!r} must hold a mapping of flag names to values")
    return data


def _field_help(cls: type, name: str) -> str:
    """The help text of field `name`, from the nearest class in the MRO that gives one.

    A recipe may override a default with a bare `name: int = 64`; the help stays the base class's.
    """
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.name == name and f.metadata.get("help"):
                    return f.metadata["help"]
    return ""


def format_help(cls: type[TrainingConfig], prog: str) -> str:
    """Return the --help text listing every flag with its type, default and description."""
    lines = [f"usage: {prog} [--config FILE.yaml] [--flag value ...]", "", "flags:"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "see below" if default is None and "default:" in _field_help(cls, f.name) else default
        lines.append(f"  --{f.name} {kind.__name__.upper()}  (default: {shown})")
        lines.append(f"      {_field_help(cls, f.name)}")
    lines.append("  --config FILE.yaml")
    lines.append("      YAML mapping of flag names to values; flags on the command line win over it.")
    return "\n".join(lines)


def parse_config(cls: type[TrainingConfig], argv: Optional[list[str]] = None, validate: bool = True) -> TrainingConfig:
    """Build a validated `cls` from defaults < `--config` YAML < CLI flags (`validate=False`: the caller
    validates later with `validate_config`, e.g. after taking flags from a trained model).

    `argv` defaults to `sys.argv[1:]`. `--help` prints the flags and exits 0.
    Raises `ConfigError` (one line naming the bad flag) on any bad input.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if "-h" in argv or "--help" in argv:
        print(format_help(cls, Path(sys.argv[0]).name))
        raise SystemExit(0)

    cli: dict[str, str] = {}
    config_file: Optional[str] = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r} (flags look like --name value)")
        name, has_value, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if name != "config" and name not in names:
            raise _unknown(f"flag --{name}", name, names)
        if not has_value:
            next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            if next_is_value:
                value = argv[i + 1]
                i += 1
            elif name != "config" and _unwrap_optional(hints[name])[0] is bool:
                value = "true"  # a bare boolean flag switches it on
            else:
                raise ConfigError(f"--{name} needs a value")
        if name == "config":
            config_file = value
        else:
            cli[name] = value
        i += 1

    values: dict[str, Any] = {}
    if config_file is not None:
        for name, raw in _load_yaml(config_file).items():
            if name == "recipe":  # a run's config.yaml names the recipe that wrote it; not a flag
                continue
            if name not in names:
                raise _unknown(f"key {name!r} in --config file {config_file!r}", str(name), names)
            values[name] = _convert(name, raw, hints[name])
    for name, raw in cli.items():
        values[name] = _convert(name, raw, hints[name])
    config = cls(**values)
    if validate:
        validate_config(config)
    return config


def validate_config(config: TrainingConfig) -> None:
    """`config.fill_defaults()` then `config.validate()`, its first `InvalidFlag` turned into a one-line `ConfigError`
    with the given value."""
    try:
        config.fill_defaults()
        config.validate()
    except InvalidFlag as err:
        given = getattr(config, err.name, None) if err.given is _VALUE else err.given
        raise ConfigError(f"{err}, got {given!r}") from None


def config_to_dict(config: TrainingConfig) -> dict[str, Any]:
    """Return the config as a plain dict (field order kept) for writing to YAML/JSON."""
    return dataclasses.asdict(config)
