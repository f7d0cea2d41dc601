"""A small training framework on Hugging Face Accelerate: exact accumulation, gathered metrics, one banner.

This module is the public API: a recipe imports everything it uses from `framework` itself, and `__all__`
lists what we promise to keep. The modules below it (framework.core, .data, .io, .evaluate, .train) are free
to move; see recipes/digits.py for the shape of a recipe and docs/own-recipe.md for writing one.
"""

from framework.core.config import TrainingConfig, flag, parse_config, require
from framework.core.errors import ConfigError, FlagError, UserError, run_main
from framework.core.progress import progress_bar
from framework.core.runtime import build_accelerator
from framework.data.columns import require_column
from framework.data.hub import load_hub_splits
from framework.data.identity import content_hash, record_source
from framework.data.label_mapping import to_model_labels, training_classes
from framework.data.labels import (
    class_names_from,
    label_name,
    sorted_class_names,
    stratified_hold_out,
    to_class_ids,
)
from framework.data.loaders import build_eval_loader, build_train_data, check_labels
from framework.data.local_files import (
    check_complete_rows,
    load_by_content,
    load_local_file,
    load_local_stream,
    quiet_datasets,
)
from framework.data.multi_label import multi_label_names_from, to_indicators
from framework.data.preparation import (
    arrow_batches,
    cached_beside,
    column_batches,
    map_with_progress,
    preparation_workers,
    shared_work,
)
from framework.data.table_collate import column_tensor, pad_list_column
from framework.evaluate.baseline import pixel_logistic_regression, score, tfidf_logistic_regression, wanted
from framework.evaluate.evaluation import Predictions
from framework.io.files import write_atomic
from framework.io.names import WEIGHTS_FILE
from framework.io.run_directory import RunDirectory
from framework.recipe import Recipe, RecipeData, TrainedModel
from framework.runner import run
from framework.train.keyed_dropout import KeyedDropout
from framework.train.loop import FitResult, TrainState, fit
from framework.train.optim import build_optimizer, build_scheduler, total_optimizer_steps
from framework.train.sparse import sparse_updates_apply

__all__ = [
    # the recipe contract and the runner
    "Recipe", "RecipeData", "TrainedModel", "run", "run_main",
    # configuration and errors
    "TrainingConfig", "flag", "require", "parse_config", "ConfigError", "FlagError", "UserError",
    # data
    "load_local_file", "load_local_stream", "load_by_content", "check_complete_rows", "quiet_datasets",
    "load_hub_splits", "require_column", "record_source", "content_hash", "class_names_from", "to_class_ids",
    "stratified_hold_out", "training_classes", "to_model_labels",
    "label_name", "sorted_class_names", "multi_label_names_from", "to_indicators", "check_labels", "cached_beside",
    "column_batches", "map_with_progress", "arrow_batches", "preparation_workers", "shared_work", "build_train_data",
    "build_eval_loader", "pad_list_column", "column_tensor",
    # model parts
    "KeyedDropout", "sparse_updates_apply",
    # evaluation
    "Predictions", "score", "wanted", "tfidf_logistic_regression", "pixel_logistic_regression",
    # outputs and progress
    "RunDirectory", "write_atomic", "progress_bar", "WEIGHTS_FILE",
    # the loop's building blocks
    "build_accelerator", "build_optimizer", "build_scheduler", "total_optimizer_steps", "fit", "FitResult",
    "TrainState",
]
