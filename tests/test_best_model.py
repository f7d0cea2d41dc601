"""Best model at the end, and early stopping (digits, in-process)."""

from __future__ import annotations

import shutil

import pytest

from helpers import read_json, read_metrics, run_digits_in_process, weights

ARGS = ["--mixed_precision", "no", "--max_steps", "75", "--eval_steps", "15", "--learning_rate", "0.02",
        "--warmup_ratio", "0", "--lr_scheduler_type", "constant", "--seed", "3"]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("best")
    assert run_digits_in_process(out, *ARGS, "--checkpointing_steps", "30", "--metric_for_best_model",
                                 "eval_accuracy", "--load_best_model_at_end", "true") == 0
    return out


def test_the_final_report_and_weights_are_the_best_evaluations(best_run, tmp_path):
    evals = [r for r in read_metrics(best_run) if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [15, 30, 45, 60, 75]
    best = max(evals, key=lambda r: (r["eval_accuracy"], -r["step"]))  # the first of equal bests
    assert best["step"] < 75 and best["eval_accuracy"] > evals[-1]["eval_accuracy"]  # so the test means something
    summary = read_json(best_run / "summary.json")
    assert (summary["best_step"], summary["best_value"]) == (best["step"], best["eval_accuracy"])
    assert read_json(best_run / "report.json")["accuracy"] == best["eval_accuracy"]
    # model.safetensors holds those weights: evaluating it alone gives the best evaluation's accuracy
    again = tmp_path / "again"
    assert run_digits_in_process(again, "--do_train", "false", "--model_path", str(best_run)) == 0
    assert read_json(again / "report.json")["accuracy"] == best["eval_accuracy"]
    # errors.csv is that evaluation's too: the evaluation-only run of the same weights lists the same samples
    assert (best_run / "errors.csv").read_text() == (again / "errors.csv").read_text()


def test_resuming_keeps_the_best_model(best_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(best_run / "checkpoints" / "step_30", resumed / "checkpoints" / "step_30")
    shutil.copytree(best_run / "best", resumed / "best")  # what the interrupted run had written by then, or later
    assert run_digits_in_process(resumed, *ARGS, "--checkpointing_steps", "30", "--metric_for_best_model",
                                 "accuracy", "--load_best_model_at_end", "true", "--resume_from_checkpoint",
                                 "latest") == 0
    assert read_json(resumed / "report.json") == read_json(best_run / "report.json")
    a, b = weights(best_run), weights(resumed)
    assert all(a[k].equal(b[k]) for k in a)


def test_early_stopping_stops_the_run(tmp_path, capsys):
    # A threshold no evaluation can beat: the second evaluation is the first without improvement.
    assert run_digits_in_process(tmp_path, *ARGS, "--early_stopping_patience", "1",
                                 "--early_stopping_threshold", "100") == 0
    summary = read_json(tmp_path / "summary.json")
    assert summary["optimizer_steps"] == 30 and summary["early_stopped"] is True
    assert summary["best_metric"] == "eval_loss" and summary["best_step"] in (15, 30)
    assert "early stopping: eval_loss did not improve for 1 evaluations" in capsys.readouterr().out


def test_an_unknown_metric_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_digits_in_process(out, *ARGS, "--metric_for_best_model", "eval_auc") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --metric_for_best_model 'eval_auc' is not an evaluation metric; there are: "
        "eval_accuracy, eval_average_precision, eval_expected_calibration_error, eval_log_loss, eval_loss, "
        "eval_macro_f1, eval_roc_auc, eval_top_5_accuracy, eval_weighted_f1")
    assert not out.exists()


def test_a_recipes_own_metric_can_be_tracked(tmp_path):
    import dataclasses

    from sklearn.metrics import balanced_accuracy_score

    from framework import run
    from framework.core.errors import run_main
    from recipes import digits

    recipe = dataclasses.replace(digits.RECIPE, extra_metrics=lambda p: {
        "balanced_accuracy": balanced_accuracy_score(p.labels, p.predictions)})
    assert run_main(lambda: run(recipe, ["--output_dir", str(tmp_path), *ARGS, "--metric_for_best_model",
                                         "balanced_accuracy"])) == 0
    summary = read_json(tmp_path / "summary.json")
    evals = [r["eval_balanced_accuracy"] for r in read_metrics(tmp_path) if "eval_loss" in r]
    assert summary["best_metric"] == "eval_balanced_accuracy" and summary["best_value"] == max(evals)
