"""Use what you trained: evaluation-only runs and predictions.csv from a finished run (--model_path)."""

from __future__ import annotations

import csv
import random
import shutil

import pytest

from framework.core.errors import run_main

from helpers import (
    IMAGES,
    SHAPES,
    TEXT,
    TEXT_ARGS,
    read_json,
    run_digits_in_process,
    run_recipe_in_process,
    run_script_in_group,
)


def _read_predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, text_files):
    out = tmp_path_factory.mktemp("text_run")
    assert run_recipe_in_process("text_classification", "--train_file", str(text_files / "train.csv"),
                                 "--validation_file", str(text_files / "valid.csv"), "--output_dir", str(out),
                                 "--overwrite_output_dir", "true", *TEXT_ARGS) == 0
    assert read_json(out / "labels.json") == ["food", "sports", "tech"]
    return out


@pytest.mark.slow
def test_text_predictions_on_one_and_two_processes(tmp_path, text_files, text_run):
    # The validation texts without their labels, in a new order; the labels kept aside.
    with open(text_files / "valid.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    random.Random(4).shuffle(rows)
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("text\n" + "".join(f'"{r["text"]}"\n' for r in rows))
    args = ["--do_train", "false", "--do_eval", "false", "--do_predict", "true", "--model_path", str(text_run),
            "--test_file", str(unlabelled)]
    assert run_recipe_in_process("text_classification", *args, "--output_dir", str(tmp_path / "one")) == 0
    run_script_in_group(TEXT, *args, "--output_dir", str(tmp_path / "two"))  # a forked 2-process gloo group
    assert read_json(tmp_path / "two" / "summary.json")["world_size"] == 2
    first, second = _read_predictions(tmp_path / "one" / "predictions.csv"), \
        _read_predictions(tmp_path / "two" / "predictions.csv")
    assert [p["id"] for p in first] == [str(i) for i in range(len(rows))]  # one row per input, input order
    assert [p["prediction"] for p in first] == [p["prediction"] for p in second]
    for p in first:
        probabilities = [float(p[f"prob_{c}"]) for c in ("food", "sports", "tech")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert float(p["score"]) == pytest.approx(max(probabilities)) and p[f"prob_{p['prediction']}"] == p["score"]
    accuracy = sum(p["prediction"] == r["label"] for p, r in zip(first, rows)) / len(rows)
    assert accuracy == pytest.approx(read_json(text_run / "report.json")["accuracy"], abs=1e-9)
    assert not (tmp_path / "one" / "test_report.json").exists()  # no labels, no test report


def test_text_evaluation_only_reproduces_the_trained_report(tmp_path, text_files, text_run):
    from recipes import text_classification

    out = tmp_path / "eval"
    assert run_main(lambda: text_classification.main([
        "--do_train", "false", "--model_path", str(text_run), "--validation_file", str(text_files / "valid.csv"),
        "--output_dir", str(out)])) == 0
    assert read_json(out / "report.json") == read_json(text_run / "report.json")
    assert read_json(out / "summary.json")["do_train"] is False
    assert not (out / "model.safetensors").exists()


def test_a_conflicting_architecture_flag_is_refused(tmp_path, capsys, text_files, text_run):
    from recipes import text_classification

    code = run_main(lambda: text_classification.main([
        "--do_train", "false", "--model_path", str(text_run), "--validation_file", str(text_files / "valid.csv"),
        "--d_model", "32", "--output_dir", str(tmp_path / "out")]))
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"error: --d_model 32 conflicts with the model of --model_path "
                                               f"{str(text_run)!r} (trained with d_model 64)")
    assert not (tmp_path / "out").exists()


def test_digits_evaluation_from_a_checkpoint_folder(tmp_path):
    run = tmp_path / "run"
    assert run_digits_in_process(run, "--max_steps", "20", "--checkpointing_steps", "10", "--channels", "16") == 0
    out = tmp_path / "eval"
    # the architecture flag (--channels 16) comes from the run's config.yaml
    assert run_digits_in_process(out, "--do_train", "false", "--model_path", str(run / "checkpoints" / "step_20")) == 0
    assert read_json(out / "report.json") == read_json(run / "report.json")
    assert read_json(out / "labels.json") == [str(d) for d in range(10)]


@pytest.mark.slow
def test_image_predictions_for_a_folder_with_and_without_classes(tmp_path, image_folders):
    run = tmp_path / "run"
    assert run_recipe_in_process("image_classification", "--train_dir", str(image_folders / "train"),
                                 "--validation_dir", str(image_folders / "valid"), "--output_dir", str(run),
                                 "--num_train_epochs", "6", "--channels", "8", "--groups", "4",
                                 "--learning_rate", "3e-3") == 0
    flat = tmp_path / "flat"
    flat.mkdir()
    names = []
    for shape in SHAPES:
        for image in sorted((image_folders / "valid" / shape).iterdir())[:5]:
            shutil.copy(image, flat / f"{shape}_{image.name}")
            names.append(f"{shape}_{image.name}")
    args = ["--do_train", "false", "--do_eval", "false", "--do_predict", "true", "--model_path", str(run)]
    assert run_recipe_in_process("image_classification", *args, "--test_dir", str(flat), "--output_dir",
                                 str(tmp_path / "p1")) == 0
    run_script_in_group(IMAGES, *args, "--test_dir", str(image_folders / "valid"), "--output_dir",
                        str(tmp_path / "p2"))  # a forked 2-process gloo group
    rows = _read_predictions(tmp_path / "p1" / "predictions.csv")
    assert sorted(r["id"] for r in rows) == sorted(names) and len(rows) == 15
    assert {r["prediction"] for r in rows} <= set(SHAPES)
    assert not (tmp_path / "p1" / "test_report.json").exists()
    # With class folders: a test report, which on the validation folder is the trained run's report.
    assert len(_read_predictions(tmp_path / "p2" / "predictions.csv")) == 60
    assert read_json(tmp_path / "p2" / "test_report.json")["accuracy"] == pytest.approx(
        read_json(run / "report.json")["accuracy"])


def test_a_recipes_extra_metric_is_logged_and_reported(tmp_path):
    import dataclasses

    from sklearn.metrics import balanced_accuracy_score

    from framework import run
    from recipes import digits

    from helpers import read_metrics

    recipe = dataclasses.replace(digits.RECIPE, extra_metrics=lambda p: {
        "balanced_accuracy": balanced_accuracy_score(p.labels, p.predictions)})
    assert run_main(lambda: run(recipe, ["--output_dir", str(tmp_path), "--max_steps", "30", "--eval_steps",
                                         "15"])) == 0
    report = read_json(tmp_path / "report.json")
    # balanced accuracy is the mean per-class recall: checked against the classification report itself
    recalls = [report[str(d)]["recall"] for d in range(10)]
    assert report["extra"]["balanced_accuracy"] == pytest.approx(sum(recalls) / 10)
    evals = [r for r in read_metrics(tmp_path) if "eval_loss" in r]
    assert len(evals) == 2 and all("eval_balanced_accuracy" in r for r in evals)
    assert evals[-1]["eval_balanced_accuracy"] == pytest.approx(report["extra"]["balanced_accuracy"])
