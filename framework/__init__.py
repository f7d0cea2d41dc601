"""A small training framework on Hugging Face Accelerate: exact accumulation, gathered metrics, one banner.

Recipes import the building blocks from here; see recipes/digits.py for the shape of a recipe.
"""

from framework.core.config import TrainingConfig, parse_config
from framework.core.errors import ConfigError, UserError, run_main
from framework.core.runtime import build_accelerator
from framework.data.loaders import build_eval_loader, build_train_data
from framework.io.run_directory import RunDirectory
from framework.train.keyed_dropout import KeyedDropout
from framework.train.loop import FitResult, TrainState, fit, per_sample_cross_entropy
from framework.train.optim import build_optimizer, build_scheduler, total_optimizer_steps

__all__ = [
    "ConfigError", "FitResult", "KeyedDropout", "RunDirectory", "TrainState", "TrainingConfig", "UserError",
    "build_accelerator", "build_eval_loader", "build_optimizer", "build_scheduler", "build_train_data",
    "fit", "parse_config", "per_sample_cross_entropy", "run_main", "total_optimizer_steps",
]
