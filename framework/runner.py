"""The runner: `run(recipe, argv)` does everything a recipe does not (framework.recipe holds the contract).

It parses the flags, builds the Accelerator, claims and locks the output directory, builds the recipe's data (the
local files recorded by content) and model, places the model, builds optimizer and schedule, prepares what must be
prepared (model and optimizer, not the scheduler or the training data), trains with `fit`, evaluates, predicts,
and writes every output. A recipe's `main` is `run(RECIPE, argv)`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import default_collate

from framework.core.config import TrainingConfig, config_to_dict, parse_config, validate_config
from framework.core.errors import FlagError, RunStopped, UserError, write_failure
from framework.core.runtime import Precision, build_accelerator, peer_lost, say
from framework.core.sharding import check_sharded, wrap_blocks_not_containers
from framework.data.identity import forget_sources, recorded_sources
from framework.data.loaders import build_eval_loader, build_train_data
from framework.data.streaming import build_stream_eval, build_stream_train_data, is_stream
from framework.evaluate.best_model import check_best_metric
from framework.evaluate.evaluation import EvaluationContext, ExtraMetrics, build_report, predict_probabilities
from framework.evaluate.predictions import write_predictions
from framework.evaluate.temperature import load_temperature
from framework.evaluate.thresholds import calibrate_and_tune, check_threshold_task, fixed_thresholds, load_thresholds
from framework.io.checkpoint import resolve_checkpoint
from framework.io.names import LABELS_FILE, PREDICTIONS_FILE, TEST_REPORT
from framework.io.run_directory import RunDirectory
from framework.io.trained_model import TrainedModel, adopt_model_flags, load_trained_model, load_weights
from framework.io.weights import bare_model
from framework.recipe import Recipe, RecipeData
from framework.train.activation_checkpointing import enable_gradient_checkpointing
from framework.train.components import default_components
from framework.train.flops import meta_flops_per_sample
from framework.train.loop import FitResult, fit
from framework.train.losses import default_loss
from framework.train.optim import build_optimizer, build_scheduler, total_optimizer_steps
from framework.train.preemption import StopAtOnce
from framework.train.state import LossFn, TrainingRun


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


def check_same_preprocessing(accelerator, fingerprint: Optional[str]) -> None:
    """Every process builds its own tokenizer (say); one that differs would map the same text to other ids."""
    if fingerprint is None or accelerator.num_processes == 1:
        return
    from accelerate.utils import gather_object

    seen = gather_object([fingerprint])
    if len(set(seen)) > 1:
        raise UserError(f"the {len(seen)} processes built different preprocessing from the same data "
                        f"({len(set(seen))} different fingerprints); the tokenizer training is not deterministic")


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
        load_weights(model, trained)
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
    wrap_blocks_not_containers(accelerator, model)  # FSDP's auto-wrap (framework.core.sharding)
    model, optimizer = accelerator.prepare(model, optimizer)
    notes = dict(data.notes)
    shards = check_sharded(accelerator, model)  # FSDP: really sharded, or refused
    if shards is not None:
        notes["sharding"] = f"FSDP2, parameters sharded over {shards} processes"
    if data.baseline is not None and accelerator.is_main_process:  # once per job, into banner and summary
        notes.update(data.baseline())
    components = default_components(config) + (recipe.components(config) if recipe.components else [])
    training = TrainingRun(accelerator=accelerator, config=config, model=model, optimizer=optimizer,
                           scheduler=scheduler, train_data=train_data, eval_loader=eval_loader,
                           class_names=data.class_names, precision=precision, run_dir=run_dir, loss_fn=loss_fn,
                           extra_metrics=recipe.extra_metrics, flops_per_sample=flops, data_notes=notes,
                           preparation_s=preparation_s, data_sources=data.sources,
                           thresholds=fixed_thresholds(config, len(data.class_names)))
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
        wrap_blocks_not_containers(accelerator, model)
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
        context = EvaluationContext(accelerator, model, eval_loader, data.class_names, loss_fn, run_dir.path,
                                    config.multi_label, extra_metrics, config.save_errors)
        report = context.evaluate(temperature=1.0 if config.calibrate else temperature or 1.0, thresholds=thresholds)
        temperature, thresholds, report = calibrate_and_tune(
            context, report, calibrate=config.calibrate, tune=config.decision_threshold == "auto",
            temperature=temperature, thresholds=thresholds)
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
