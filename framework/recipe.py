"""The recipe contract: what a recipe declares (the runner, framework.runner, does everything else).

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

`framework.run(recipe, argv)` (framework.runner) does the rest; a recipe's `main` is
`run(RECIPE, argv)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from framework.data.loaders import Augment
from framework.evaluate.evaluation import ExtraMetrics
from framework.io.trained_model import TrainedModel
from framework.train.components import Component
from framework.train.state import LossFn

__all__ = ["Recipe", "RecipeData", "TrainedModel"]


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
