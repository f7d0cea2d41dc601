"""The recipe contract, and the one runner that does everything else.

A recipe declares what is particular to its task:

    RECIPE = Recipe(config_class=MyConfig, build_data=build_data, build_model=build_model)

- `build_data(config, trained)` returns a `RecipeData`: the train / eval / test
  splits it was asked for (`config.do_train`, `do_eval`, `do_predict`), the class
  names, a collate function, an optional per-sample augmentation. `trained` is the
  `TrainedModel` of `--model_path` (its class names and folder, to reload a
  tokenizer) or None.
- `build_model(config, data)` returns the `nn.Module` (called after seeding; called
  once more under `torch.device("meta")` to count the model's FLOPs, so it should
  have no side effects).
- optional: `model_flags` (config fields that define the architecture: taken from
  the `--model_path` run, a conflicting value is refused), `save_preprocessing(data,
  folder)` (a tokenizer, a vocabulary), `extra_metrics(predictions)` (metrics
  beside `classification_report`, logged as eval_<name> and in report.json),
  `export(config, model, data, folder)` (after training, on the main process: write
  the model in another library's layout, e.g. transformers' save_pretrained),
  `loss(config, data)` (the per-sample loss, instead of `default_loss`: cross entropy
  with --class_weights and --label_smoothing), `components(config)` (run-level
  features beside the defaults, framework.train.components), `shared_preparation` (True:
  `build_data` runs on every process at once instead of on the main process first, for a
  recipe whose processes share the preparation, framework.data.preparation.shared_work).

`run(recipe, argv)` then builds the Accelerator, claims the output directory,
places the model, builds optimizer and schedule, prepares what must be prepared
(model and optimizer, not the scheduler or the training data), trains with
`fit`, evaluates, predicts, and writes labels.json beside the weights. A recipe's
`main` is `run(RECIPE, argv)`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.utils.data import default_collate

from framework.core.config import TrainingConfig, config_to_dict, parse_config, validate_config
from framework.core.errors import FlagError, RunStopped, UserError, write_failure
from framework.core.runtime import Precision, build_accelerator, peer_lost, say
from framework.data.identity import forget_sources, recorded_sources
from framework.data.loaders import Augment, build_eval_loader, build_train_data
from framework.data.streaming import build_stream_eval, build_stream_train_data, is_stream
from framework.evaluate.evaluation import ExtraMetrics, build_report, evaluate, predict_probabilities
from framework.evaluate.temperature import calibrate, load_temperature
from framework.evaluate.thresholds import (
    check_threshold_task,
    fixed_thresholds,
    load_thresholds,
    tune_thresholds,
)
from framework.io.checkpoint import STATE_FILE, resolve_checkpoint
from framework.io.names import CONFIG_FILE, LABELS_FILE, PREDICTIONS_FILE, TEST_REPORT
from framework.io.run_directory import RunDirectory
from framework.io.weights import WEIGHTS_FILE, bare_model, weights_problem
from framework.train.activation_checkpointing import enable_gradient_checkpointing
from framework.train.components import Component, default_components
from framework.train.flops import meta_flops_per_sample
from framework.train.loop import FitResult, fit
from framework.train.losses import class_weights_from, classification_loss, multi_label_loss
from framework.train.optim import build_optimizer, build_scheduler, total_optimizer_steps
from framework.train.preemption import StopAtOnce
from framework.train.state import LossFn, TrainingRun


@dataclass
class RecipeData:
    """What `build_data` returns. Every split yields samples with a `labels` entry (-1: unknown, test only)."""

    class_names: list[str]
    train: Any = None
    eval: Any = None
    test: Any = None
    test_ids: Optional[list] = None  # one id per test input for predictions.csv (default: its index)
    collate_fn: Optional[Callable] = None
    augment: Optional[Augment] = None
    notes: dict[str, Any] = field(default_factory=dict)  # into the banner and summary.json
    preprocessing: Any = None  # e.g. the tokenizer, for save_preprocessing
    baseline: Optional[Callable[[], dict[str, float]]] = None  # fits and scores a classic baseline (main process)
    fingerprint: Optional[str] = None  # of preprocessing each process builds itself; must agree across processes
    # For a streamed split (a datasets.IterableDataset, framework.data.streaming): raw samples -> model samples,
    # applied to the samples a process uses, as they are read
    prepare: Optional[Callable[[list[dict]], list[dict]]] = None
    # evaluation indices -> {column: values} identifying those samples in errors.csv (a file, a text)
    describe_eval: Optional[Callable[[list[int]], dict[str, list]]] = None
    # flag -> {"path", "sha256"} of the local data read (framework.data.identity records what the loaders read)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A task: its config class, how to build its data and its model, and what else to save."""

    config_class: type
    build_data: Callable[[Any, Optional["TrainedModel"]], RecipeData]
    build_model: Callable[[Any, RecipeData], torch.nn.Module]
    model_flags: tuple[str, ...] = ()
    save_preprocessing: Optional[Callable[[RecipeData, Path], None]] = None
    extra_metrics: Optional[ExtraMetrics] = None  # gathered predictions -> {name: value}, beside the report
    export: Optional[Callable[[Any, torch.nn.Module, RecipeData, Path], None]] = None  # (config, model, data, dir)
    loss: Optional[Callable[[Any, RecipeData], LossFn]] = None  # (config, data) -> per-sample loss; default_loss
    components: Optional[Callable[[Any], list[Component]]] = None  # (config) -> run-level features beside the defaults
    name: str = ""  # written into config.yaml as `recipe`, so --model_path can tell a run of another recipe
    # build_data on every process at once rather than the main process first: for a recipe that shares its
    # preparation (framework.data.preparation.shared_work) and orders the rest itself (main_process_first)
    shared_preparation: bool = False


@dataclass(frozen=True)
class TrainedModel:
    """A finished run (or one of its checkpoints) given with --model_path."""

    run_dir: Path  # where config.yaml, labels.json and the preprocessing files are
    weights: Path
    config: dict[str, Any]
    class_names: list[str]
    temperature: Optional[float] = None  # its calibration.json, checked
    thresholds: Optional[np.ndarray] = None  # its thresholds.json, checked (None: argmax, or 0.5 per label)


def _read_run_file(path: Path, model_path: str, parse: Callable[[str], Any], kind: type, what: str) -> Any:
    """A run's config.yaml or labels.json, parsed; one line naming the file when it is missing or damaged."""
    if not path.is_file():
        raise FlagError("model_path", f"{model_path!r}: {path} is missing (a run of an older version, or not a "
                        f"run folder)")
    try:
        value = parse(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FlagError("model_path", f"{model_path!r}: {path} is damaged ({reason}); train the run again") from None
    if not isinstance(value, kind):
        raise FlagError("model_path", f"{model_path!r}: {path} does not hold {what}; train the run again")
    return value


def load_trained_model(path: str, recipe_name: str = "") -> TrainedModel:
    """Resolve --model_path: a run's output_dir, or a checkpoint folder inside one; every file it needs is
    checked (present, readable, made by this recipe) before anything is loaded."""
    folder = Path(path)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FlagError("model_path", f"{path!r} holds no {WEIGHTS_FILE} (give a finished run's output_dir "
                        f"or a checkpoint folder)")
    problem = weights_problem(folder / WEIGHTS_FILE)
    if problem:
        raise FlagError("model_path", f"{path!r}: {problem}; give another run or checkpoint folder")
    run_dir = folder.parent.parent if (folder / STATE_FILE).is_file() else folder
    config = _read_run_file(run_dir / CONFIG_FILE, path, yaml.safe_load, dict, "a run's config")
    trained_with = config.get("recipe")
    if recipe_name and trained_with and trained_with != recipe_name:
        raise FlagError("model_path", f"{path!r} is a run of the {trained_with} recipe; this is {recipe_name} "
                        f"(use recipes/{trained_with}.py with it, or a run of this recipe)")
    names = _read_run_file(run_dir / LABELS_FILE, path, json.loads, list, "a list of class names")
    return TrainedModel(run_dir, folder / WEIGHTS_FILE, config, [str(n) for n in names])


def adopt_model_flags(config: TrainingConfig, trained: TrainedModel, names: tuple[str, ...]) -> None:
    """Take the architecture flags from the trained run; one the user set to something else is an error."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in names:
        if name not in trained.config:  # a flag newer than the run: its default
            continue
        saved, current = trained.config[name], getattr(config, name)
        if current == defaults[name]:
            setattr(config, name, saved)
        elif current != saved:
            raise FlagError(name, f"{current} conflicts with the model of --model_path "
                            f"{str(trained.run_dir)!r} (trained with {name} {saved})")


def _load_weights(model: torch.nn.Module, trained: TrainedModel) -> None:
    state = load_file(str(trained.weights))
    # A model exported by a recipe's `export` (transformers' layout) names its weights without the
    # recipe's wrapper prefix, e.g. "bert..." for a wrapper's "model.bert...".
    prefixes = {k.split(".", 1)[0] + "." for k in model.state_dict()}
    if len(prefixes) == 1 and not any(k.startswith(next(iter(prefixes))) for k in state):
        state = {next(iter(prefixes)) + k: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise FlagError("model_path", f"{str(trained.weights)!r} does not fit this model "
                        f"({str(err).strip().splitlines()[-1].strip()})") from None


def check_best_metric(key: str, extra_metrics: Optional[ExtraMetrics], multi_label: bool = False) -> None:
    """Refuse a --metric_for_best_model that no evaluation will produce, before anything runs."""
    from framework.evaluate.evaluation import MULTI_LABEL_METRICS, PROBABILITY_METRICS, Predictions

    if not key:
        return
    names = {"eval_loss", "eval_accuracy", "eval_macro_f1", "eval_weighted_f1",
             *(f"eval_{name}" for name in PROBABILITY_METRICS)}
    if multi_label:  # no calibration error or top-k; micro and samples F1 and the Hamming loss instead
        names -= {"eval_expected_calibration_error", "eval_top_5_accuracy"}
        names |= {f"eval_{name}" for name in MULTI_LABEL_METRICS}
    if extra_metrics is not None:  # the recipe's metric names, from a two-sample, two-class evaluation
        from framework.evaluate.probabilities import summarize

        labels = np.array([0, 1])
        two = Predictions(labels, labels, np.array([0.1, 0.2]), summarize(np.array([[0.9, 0.1], [0.2, 0.8]]),
                                                                          labels, full=True))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                names |= {f"eval_{name}" for name in extra_metrics(two)}
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError):
            # A metric that needs the run's own classes (more than two, a name) cannot run on this two-class sample:
            # its names are known at the first evaluation, which checks the key then. Anything else is a bug in the
            # recipe's metric, and surfaces now.
            return
    if key not in names:
        raise FlagError("metric_for_best_model", f"{key!r} is not an evaluation metric; there are: "
                        f"{', '.join(sorted(names))}")


def check_same_preprocessing(accelerator, fingerprint: Optional[str]) -> None:
    """Every process builds its own tokenizer (say); one that differs would map the same text to other ids."""
    if fingerprint is None or accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    seen = gather_object([fingerprint])
    if len(set(seen)) > 1:
        raise UserError(f"the {len(seen)} processes built different preprocessing from the same data "
                        f"({len(set(seen))} different fingerprints); the tokenizer training is not deterministic")


def training_labels(dataset: Any) -> np.ndarray:
    """The `labels` of every training sample (for --class_weights balanced), without decoding inputs."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return np.asarray(dataset.with_format("numpy")["labels"])  # a plain copy: no set_transform
    return np.asarray([int(dataset[i]["labels"]) for i in range(len(dataset))])


def write_predictions(path: Path, ids: list, probabilities: np.ndarray, class_names: list[str],
                      thresholds: Optional[np.ndarray] = None, multi_label: bool = False,
                      delimiter: str = ",") -> None:
    """predictions.csv: id, prediction (class name), score (its probability), one probability column per class.
    Multi-label: `labels`, the predicted label set joined by `delimiter` (the labels whose probability reaches
    their threshold, 0.5 without one), then each label's probability. A binary task with a threshold predicts
    the second class where its probability reaches it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if multi_label:
        cut = thresholds if thresholds is not None else np.full(len(class_names), 0.5, np.float32)
        writer.writerow(["id", "labels", *[f"prob_{name}" for name in class_names]])
        for row_id, row in zip(ids, probabilities):
            chosen = delimiter.join(name for name, p, t in zip(class_names, row, cut) if p >= t)
            writer.writerow([row_id, chosen, *(f"{p:.6f}" for p in row)])
    else:
        writer.writerow(["id", "prediction", "score", *[f"prob_{name}" for name in class_names]])
        for row_id, row in zip(ids, probabilities):
            best = int(row.argmax()) if thresholds is None else int(row[1] >= thresholds[0])
            writer.writerow([row_id, class_names[best], f"{row[best]:.6f}", *(f"{p:.6f}" for p in row)])
    from framework.io.files import write_atomic
    write_atomic(path, buffer.getvalue())


def _trained_model(recipe: Recipe, config: TrainingConfig) -> Optional[TrainedModel]:
    """The --model_path run, its architecture flags adopted into `config` (re-validated), or None."""
    if not config.model_path:
        return None
    trained = load_trained_model(config.model_path, recipe.name)
    # How the model's outputs are read (softmax or one sigmoid per label, the label separator) is part of it too.
    adopt_model_flags(config, trained, (*recipe.model_flags, "problem_type", "label_delimiter"))
    # What the run saved beside the weights is checked before anything is written (one line naming file and value).
    folder = trained.weights.parent
    multi_label = config.problem_type == "multi_label_classification"
    trained = dataclasses.replace(trained, temperature=load_temperature(folder),
                                  thresholds=load_thresholds(folder, trained.class_names, multi_label))
    if Path(config.output_dir).resolve() == trained.run_dir.resolve():
        raise FlagError("output_dir", f"{config.output_dir!r} is the run of --model_path; write this run's "
                        f"outputs to another --output_dir")
    return trained


def _data_and_model(recipe: Recipe, config: TrainingConfig, accelerator: Accelerator,
                    trained: Optional[TrainedModel]) -> tuple[RecipeData, torch.nn.Module]:
    """The recipe's data (the same preprocessing on every process) and its model on the device."""
    forget_sources()  # the local files build_data reads are recorded by content (framework.data.identity)
    if recipe.shared_preparation:
        data = recipe.build_data(config, trained)
    else:
        with accelerator.main_process_first():  # the main process downloads and caches; the others reuse it
            data = recipe.build_data(config, trained)
    data.sources = {**recorded_sources(), **data.sources}
    check_same_preprocessing(accelerator, data.fingerprint)
    check_label_shape(config, data)
    if trained and list(data.class_names) != list(trained.class_names):
        raise UserError(f"the data's classes {data.class_names} differ from those of --model_path "
                        f"{trained.class_names}")
    model = recipe.build_model(config, data)
    if trained:
        _load_weights(model, trained)
    model = model.to(accelerator.device)  # before the optimizer is built: fused AdamW needs the device
    if config.gradient_checkpointing and enable_gradient_checkpointing(model) == 0:
        say(accelerator, f"note: --gradient_checkpointing: {type(model).__name__} has no blocks to checkpoint "
                         f"(nothing worth recomputing); it trains as without it")
    return data, model


def _eval_loader(data: RecipeData, config: TrainingConfig, accelerator: Accelerator) -> Any:
    """The evaluation split's loader: a prepared DataLoader, or a stream's share for this process."""
    if is_stream(data.eval):
        return build_stream_eval(data.eval, config, accelerator, data.prepare or list, data.collate_fn or default_collate)
    return build_eval_loader(data.eval, config, accelerator, data.collate_fn)


def check_label_shape(config: TrainingConfig, data: RecipeData) -> None:
    """Refuse --problem_type when the recipe's samples say otherwise: one class id per sample (single-label), or
    one indicator row over the labels (multi-label); a recipe that only builds one kind is told apart here, not by
    a shape error in the loss."""
    split = next((s for s in (data.train, data.eval) if s is not None and not is_stream(s)), None)
    if split is None or len(split) == 0:
        return
    labels = np.asarray(split[0]["labels"])
    if config.multi_label and labels.shape != (len(data.class_names),):
        raise FlagError("problem_type", f"multi_label_classification: this recipe's samples carry one class each "
                        f"(labels of shape {labels.shape}), not a set of labels; it does not build multi-label data")
    if not config.multi_label and labels.ndim != 0:
        raise FlagError("problem_type", f"single_label_classification: the samples carry label sets (labels of "
                        f"shape {labels.shape}); pass --problem_type multi_label_classification")


def default_loss(config: TrainingConfig, data: RecipeData) -> LossFn:
    """Per-sample cross entropy with --class_weights and --label_smoothing (a Recipe may bring its own); with
    --problem_type multi_label_classification, each sample's binary cross entropy summed over its labels (each
    label learns as its own binary classifier would; framework.train.losses.multi_label_loss)."""
    if config.multi_label:
        return multi_label_loss()
    balanced = config.class_weights == "balanced" and data.train is not None
    if balanced and is_stream(data.train):
        raise FlagError("class_weights", "balanced needs the training labels counted, which a stream does not "
                        "allow before training; give one weight per class as a comma list")
    labels = training_labels(data.train) if balanced else None
    return classification_loss(class_weights_from(config.class_weights, labels, len(data.class_names)),
                               config.label_smoothing)


def _train(recipe: Recipe, config: TrainingConfig, accelerator: Accelerator, precision: Precision,
           run_dir: RunDirectory, data: RecipeData, model: torch.nn.Module, eval_loader: Any,
           loss_fn: LossFn, preparation_s: float) -> FitResult:
    """Loaders, FLOPs, optimizer and schedule, the baseline; then fit."""
    if is_stream(data.train):
        train_data = build_stream_train_data(data.train, config, accelerator, data.prepare or list,
                                             data.collate_fn or default_collate, data.augment)
    else:
        train_data = build_train_data(data.train, config, accelerator, data.collate_fn, augment=data.augment)
    flops = None
    if accelerator.is_main_process:
        flops = meta_flops_per_sample(lambda: recipe.build_model(config, data), train_data.first_micro_batch(),
                                      loss_fn)
    optimizer = build_optimizer(model, config)
    total = total_optimizer_steps(config, train_data.plan.windows_per_epoch)
    scheduler = build_scheduler(optimizer, config, total)  # not prepared: see build_scheduler
    model, optimizer = accelerator.prepare(model, optimizer)
    notes = dict(data.notes)
    if data.baseline is not None and accelerator.is_main_process:  # once per job, into banner and summary
        notes.update(data.baseline())
    components = default_components(config) + (recipe.components(config) if recipe.components else [])
    training = TrainingRun(accelerator, config, model, optimizer, scheduler, train_data, eval_loader,
                           data.class_names, precision, run_dir, loss_fn, recipe.extra_metrics, flops, notes,
                           preparation_s)
    training.thresholds = fixed_thresholds(config, len(data.class_names))
    training.data_sources = data.sources
    result = fit(training, components)
    if "baseline_accuracy" in notes:
        metrics = result.report.metrics
        micro = (f", micro F1 {notes['baseline_micro_f1']:.4f}", f", micro F1 {metrics['micro_f1']:.4f}") \
            if "baseline_micro_f1" in notes and "micro_f1" in metrics else ("", "")
        kind = "subset accuracy" if config.multi_label else "accuracy"
        say(accelerator, f"baseline (scikit-learn, same split): {kind} {notes['baseline_accuracy']:.4f}, "
                         f"macro F1 {notes['baseline_macro_f1']:.4f}{micro[0]}; this model: {kind} "
                         f"{metrics['accuracy']:.4f}, macro F1 {metrics['macro avg']['f1-score']:.4f}{micro[1]}")
    return result


def run(recipe: Recipe, argv: Optional[list[str]] = None, *, config: Optional[TrainingConfig] = None,
        setup: Optional[Callable[[Accelerator], None]] = None) -> Optional[FitResult]:
    """Parse flags (or take `config`) and do what they ask: train (fit), evaluate, predict; write every output.

    `setup(accelerator)`, if given, runs right after the Accelerator is built (tests use it).
    Returns fit's result when the run trained.
    """
    # Validated after the --model_path run's architecture flags are adopted: defaults that depend on them
    # (the text recipe's per-model learning rate, say) are filled for the model that will really run.
    config = config if config is not None else parse_config(recipe.config_class, argv, validate=False)
    trained = _trained_model(recipe, config)
    validate_config(config)
    check_best_metric(config.best_metric, recipe.extra_metrics, config.multi_label)
    accelerator, precision = build_accelerator(config)
    if setup is not None:
        setup(accelerator)
    run_dir = RunDirectory.for_run(config, accelerator)  # held (locked) until this run ends
    try:
        resolve_checkpoint(config.resume_from_checkpoint, config.output_dir)  # a damaged one stops before data loads
        run_dir.recipe_name = recipe.name
        # A stop signal before training (or after it) stops at once: there is no step to finish (framework.train.
        # preemption); during training the loop's own handler finishes the step and checkpoints.
        with StopAtOnce("preparing the data and the model", "nothing was written to --output_dir and no step was "
                        "lost; run the same command again", on_stop=run_dir.release) as stop:
            try:
                return _run_phases(recipe, config, accelerator, precision, run_dir, trained, stop)
            except RunStopped:
                raise
            except Exception as err:  # a collective that timed out (--ddp_timeout) or lost its peer, a full disk
                stopped = write_failure(err) or peer_lost(err, accelerator.num_processes, config.ddp_timeout)
                if stopped is None:
                    raise
                raise stopped from None
    finally:
        run_dir.release()


def _run_phases(recipe: Recipe, config: TrainingConfig, accelerator: Accelerator, precision: Precision,
                run_dir: RunDirectory, trained: Optional[TrainedModel], stop: StopAtOnce) -> Optional[FitResult]:
    """Prepare, then train (or evaluate the --model_path model), then predict; `stop` says which phase a stop
    signal would interrupt, and what that costs."""
    preparing = time.perf_counter()
    data, model = _data_and_model(recipe, config, accelerator, trained)
    preparation_s = time.perf_counter() - preparing
    check_threshold_task(config, len(data.class_names))
    loss_fn = (recipe.loss or default_loss)(config, data)
    eval_loader = _eval_loader(data, config, accelerator) if config.do_eval else None

    def write_model_files(folder: Path) -> None:  # before the first step: a stopped run's checkpoints need them
        run_dir.write_json(LABELS_FILE, data.class_names)
        if recipe.save_preprocessing:
            recipe.save_preprocessing(data, folder)

    run_dir.on_start.append(write_model_files)
    run_dir.class_names, run_dir.describe_eval = list(data.class_names), data.describe_eval
    run_dir.label_delimiter = config.label_delimiter
    result = None
    # The temperature of --calibrate (framework.evaluate.temperature): the trained run's, or this run's.
    temperature = trained.temperature if trained else None
    # The decision thresholds: a fixed --decision_threshold, else the trained run's thresholds.json.
    thresholds = fixed_thresholds(config, len(data.class_names))
    if thresholds is None and trained and config.decision_threshold != "auto":
        thresholds = trained.thresholds
    if config.do_train:
        stop.phase = "setting up training"
        stop.consequence = "no optimizer step was lost: run the same command again (with --resume_from_checkpoint " \
                           "auto, it continues from the newest checkpoint)"
        result = _train(recipe, config, accelerator, precision, run_dir, data, model, eval_loader, loss_fn,
                        preparation_s)
        model, temperature = result.model, result.summary["calibration_temperature"]
        thresholds = _thresholds_of(result.report, data.class_names, config.multi_label)
        if accelerator.is_main_process and recipe.export:
            recipe.export(config, bare_model(accelerator, model), data, run_dir.path)
    else:
        stop.phase, stop.consequence = "evaluating", "the model of --model_path is unchanged: run the same command again"
        model = accelerator.prepare(model)
        temperature, thresholds = _evaluate_only(accelerator, config, model, eval_loader, data, run_dir, precision,
                                                 recipe.extra_metrics, loss_fn, temperature, thresholds)
    if config.do_predict:
        stop.phase = "predicting"
        stop.consequence = (f"the trained run in {config.output_dir} is complete: predict with --model_path "
                            f"{config.output_dir} --do_train false --do_eval false --do_predict") if config.do_train \
            else "the model of --model_path is unchanged: run the same command again with --overwrite_output_dir true"
        _predict(accelerator, config, model, data, run_dir, recipe.extra_metrics, temperature or 1.0, thresholds)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _thresholds_of(report: Any, class_names: list[str], multi_label: bool) -> Optional[np.ndarray]:
    """The thresholds a report was decided with (its decision_thresholds), or None (argmax)."""
    named = report.metrics.get("decision_thresholds")
    if not named:
        return None
    names = list(class_names) if multi_label else [class_names[1]]
    return np.array([named[name] for name in names], np.float32)


def _evaluate_only(accelerator: Accelerator, config: TrainingConfig, model: torch.nn.Module, eval_loader: Any,
                   data: RecipeData, run_dir: RunDirectory, precision: Precision,
                   extra_metrics: Optional[ExtraMetrics], loss_fn: LossFn,
                   temperature: Optional[float], thresholds: Optional[np.ndarray]) -> tuple[Optional[float], Any]:
    """--do_train false: the config, and with --do_eval the report of the --model_path model (its probabilities
    at the run's saved temperature, decided by its saved thresholds; with --calibrate, a temperature fitted on
    this evaluation split, with --decision_threshold auto thresholds fitted on it). Returns the temperature and
    the thresholds in use."""
    run_dir.start(config_to_dict(config) | {"mixed_precision": precision.requested} |
                  ({"data_sources": data.sources} if data.sources else {}))
    summary: dict[str, Any] = {"do_train": False, "model_path": config.model_path, "world_size":
                               accelerator.num_processes}
    if eval_loader is not None:
        report = evaluate(accelerator, model, eval_loader, data.class_names, loss_fn, extra_metrics=extra_metrics,
                          errors=config.save_errors, temperature=1.0 if config.calibrate else temperature or 1.0,
                          thresholds=thresholds)
        if config.calibrate:
            temperature, report = calibrate(accelerator, model, eval_loader, data.class_names, loss_fn, report,
                                            run_dir, extra_metrics=extra_metrics, errors=config.save_errors)
        if config.decision_threshold == "auto":
            thresholds, report = tune_thresholds(accelerator, model, eval_loader, data.class_names, loss_fn, run_dir,
                                                 config.multi_label, extra_metrics=extra_metrics,
                                                 errors=config.save_errors, temperature=temperature or 1.0)
        say(accelerator, report.text)
        run_dir.write_report(report)
        summary["eval_accuracy"] = report.metrics["accuracy"]
    summary["calibration_temperature"] = temperature
    summary["decision_thresholds"] = None if thresholds is None else \
        dict(zip(data.class_names if config.multi_label else data.class_names[1:], thresholds.tolist()))
    run_dir.write_json("summary.json", summary)
    return temperature, thresholds


def _predict(accelerator, config, model, data: RecipeData, run_dir: RunDirectory,
             recipe_extra_metrics: Optional[ExtraMetrics], temperature: float = 1.0,
             thresholds: Optional[np.ndarray] = None) -> None:
    """predictions.csv in input order (each input once over N processes), its probabilities at `temperature`
    (--calibrate's), decided by `thresholds` (--decision_threshold's); a test report when labelled."""
    if data.test is None:
        raise FlagError("do_predict", "needs test inputs (this recipe's --test_file / --test_dir)")
    loader = build_eval_loader(data.test, config, accelerator, data.collate_fn)
    probabilities, labels = predict_probabilities(accelerator, model, loader, temperature)
    ids = data.test_ids if data.test_ids is not None else list(range(len(probabilities)))
    if accelerator.is_main_process:
        write_predictions(run_dir.path / PREDICTIONS_FILE, ids, probabilities, list(data.class_names), thresholds,
                          config.multi_label, config.label_delimiter)
    say(accelerator, f"predictions: {len(probabilities)} inputs -> {run_dir.path / PREDICTIONS_FILE}")
    if len(labels) and (labels >= 0).all():
        from framework.evaluate.evaluation import Predictions, decide
        from framework.evaluate.probabilities import keep_full, multi_label_probabilities, summarize

        if labels.ndim == 2:  # multi-label: each sample's summed binary cross entropy, as the loss
            clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
            losses = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).sum(axis=1)
            predicted = Predictions((probabilities >= 0.5).astype(np.int8), labels.astype(np.int8), losses,
                                    multi_label_probabilities(probabilities))
        else:
            losses = -np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-12, None))
            kept = summarize(probabilities, labels, keep_full(len(labels), probabilities.shape[1]))
            predicted = Predictions(probabilities.argmax(1), labels, losses, kept)
        report = build_report(decide(predicted, thresholds), data.class_names, recipe_extra_metrics)
        say(accelerator, "test report:\n" + report.text)
        run_dir.write_report(report, TEST_REPORT)
