"""Run-level features are components beside the loop, and a recipe may bring its own loss (docs/architecture.md)."""

from __future__ import annotations

import dataclasses

import torch

from framework import Recipe, RecipeData, run
from framework.train.components import BestModel, Component, default_components

from helpers import read_json, read_metrics


class StopAfterTwoEvaluations(Component):
    """A feature the library does not have: stop after the second evaluation, and say so in summary.json."""

    def __init__(self):
        self.evaluations = 0

    def after_evaluation(self, run, state):
        self.evaluations += 1

    def stop_reason(self, state):
        return "two evaluations are enough" if self.evaluations >= 2 else None

    def summary(self, state):
        return {"evaluations_seen": self.evaluations}


def _digits_recipe(**changes) -> Recipe:
    from recipes import digits

    return dataclasses.replace(digits.RECIPE, **changes)


def _config(tmp_path, *extra: str):
    from framework.core.config import parse_config
    from recipes import digits

    return parse_config(digits.DigitsConfig, ["--output_dir", str(tmp_path), "--mixed_precision", "no",
                                              "--eval_steps", "5", "--max_steps", "40", *extra])


def test_best_model_and_early_stopping_are_a_component():
    from recipes import digits

    config = digits.DigitsConfig()
    assert any(isinstance(c, BestModel) for c in default_components(config))


def test_a_new_run_level_feature_is_a_component_added_without_touching_fit(tmp_path, capsys):
    recipe = _digits_recipe(components=lambda config: [StopAfterTwoEvaluations()])
    result = run(recipe, config=_config(tmp_path))
    assert result.state.step == 10  # evaluations at steps 5 and 10, then the stop
    assert "two evaluations are enough; stopped at step 10 of 40" in capsys.readouterr().out
    summary = read_json(tmp_path / "summary.json")
    assert summary["evaluations_seen"] == 2 and summary["optimizer_steps"] == 10
    assert "best_metric" in summary  # the default components are still there


def test_a_recipe_may_bring_its_own_loss(tmp_path):
    seen = []

    def doubled_cross_entropy(config, data: RecipeData):
        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            seen.append(logits.shape[0])
            return 2.0 * torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return loss

    short = ["--max_steps", "3", "--eval_steps", "0", "--logging_steps", "1"]
    run(_digits_recipe(), config=_config(tmp_path / "plain", *short))
    run(_digits_recipe(loss=doubled_cross_entropy), config=_config(tmp_path / "own", *short))
    plain = [r["loss"] for r in read_metrics(tmp_path / "plain") if "loss" in r]
    own = [r["loss"] for r in read_metrics(tmp_path / "own") if "loss" in r]
    assert seen and own[0] == 2.0 * plain[0]  # the first step's loss, before the weights differ


class CountSteps(Component):
    """A component with state of its own, kept in every checkpoint as the part "step_counter"."""

    def __init__(self):
        self.counted = 0

    def after_step(self, run, state, epoch_end):
        if not epoch_end:
            self.counted += 1

    def summary(self, state):
        return {"steps_counted": self.counted}

    def checkpoint_parts(self, run):
        return {"step_counter": self}

    def state_dict(self):
        return {"counted": self.counted}

    def load_state_dict(self, state):
        self.counted = state["counted"]


def test_a_new_checkpoint_part_is_one_entry_saved_and_restored_without_touching_save_or_load(tmp_path):
    recipe = _digits_recipe(components=lambda config: [CountSteps()])
    run(recipe, config=_config(tmp_path / "run", "--max_steps", "10", "--checkpointing_steps", "5", "--eval_steps", "0"))
    trainer = torch.load(tmp_path / "run" / "checkpoints" / "step_5" / "trainer.pt", weights_only=True)
    assert trainer["step_counter"] == {"counted": 5} and {"optimizer", "scheduler"} <= set(trainer)
    resumed = tmp_path / "run" / "checkpoints" / "step_5"
    run(recipe, config=_config(tmp_path / "again", "--max_steps", "10", "--eval_steps", "0",
                               "--resume_from_checkpoint", str(resumed)))
    assert read_json(tmp_path / "again" / "summary.json")["steps_counted"] == 10  # 5 restored + 5 counted
