"""A finished run given with --model_path: its folder, checked file by file before anything is loaded, its
architecture flags adopted, its weights loaded into the recipe's model."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError
from framework.io.checkpoint import STATE_FILE
from framework.io.names import CONFIG_FILE, LABELS_FILE
from framework.io.weights import WEIGHTS_FILE, weights_problem


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


def load_weights(model: torch.nn.Module, trained: TrainedModel) -> None:
    """Load the run's weights into `model` (a transformers export's names get the recipe wrapper's prefix)."""
    state = load_file(str(trained.weights))
    # A model exported by a recipe's `export` (transformers' layout) names its weights without the
    # recipe's wrapper prefix, e.g. "bert..." for a wrapper's "model.bert...".
    prefixes = {k.split(".", 1)[0] + "." for k in model.state_dict()}
    if len(prefixes) == 1 and not any(k.startswith(next(iter(prefixes))) for k in state):
        state = {next(iter(prefixes)) + k: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].strip()
        outputs = _saved_classes(model, state, len(trained.class_names))
        if outputs is not None and outputs != len(trained.class_names):  # the model's outputs are one per class
            raise FlagError("model_path", f": {str(trained.run_dir / LABELS_FILE)!r} lists {len(trained.class_names)} "
                            f"classes, but the weights have {outputs} outputs; labels.json does not belong to "
                            f"these weights ({reason})") from None
        raise FlagError("model_path", f"{str(trained.weights)!r} does not fit this model ({reason})") from None


def _saved_classes(model: torch.nn.Module, state: dict[str, torch.Tensor], classes: int) -> Optional[int]:
    """How many classes saved weights were trained for, where they differ from this model (built for `classes`)
    in exactly that one dimension (a head's outputs), else None."""
    current = model.state_dict()
    for name, saved in state.items():
        here = current.get(name)
        if here is None or here.shape == saved.shape or here.dim() != saved.dim():
            continue
        differing = [(a, b) for a, b in zip(here.shape, saved.shape) if a != b]
        if len(differing) == 1 and differing[0][0] == classes:
            return int(differing[0][1])
    return None
