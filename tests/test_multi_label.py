"""Multi-label classification (--problem_type multi_label_classification) and decision thresholds: the report
against scikit-learn, thresholds of best F1, the text recipe on 1 and 2 processes, predict with the saved
thresholds, and bad label sets refused with one line."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import yaml
from datasets import Dataset

from framework.core.errors import UserError, run_main
from framework.data.multi_label import multi_label_names_from, to_indicators
from framework.evaluate.evaluation import Predictions, build_report, decide
from framework.evaluate.probabilities import multi_label_probabilities
from framework.evaluate.thresholds import best_f1_threshold, fit_thresholds

from helpers import FILLER, TEXT, TOPICS, read_json, run_recipe_in_process, run_script_in_group


def test_label_sets_from_delimited_strings_and_lists_name_the_same_labels():
    strings = Dataset.from_dict({"labels": ["b, a", "c", "a,a"]})
    names, split = multi_label_names_from(strings, "labels", ",")
    assert names == ["a", "b", "c"]
    assert split["labels"] == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    lists = to_indicators(Dataset.from_dict({"labels": [["c", "a"], ["b"]]}), "labels", names, ",", "valid")
    assert lists["labels"] == [[1, 0, 1], [0, 1, 0]]
    numbers = to_indicators(Dataset.from_dict({"labels": [[2, 10.0]]}), "labels", ["2", "10"], ",", "valid")
    assert numbers["labels"] == [[1, 1]]  # numbers are names, as for single-label classes
    unlabelled = to_indicators(Dataset.from_dict({"text": ["x"]}), "labels", names, ",", "test", required=False)
    assert unlabelled["labels"] == [[-1, -1, -1]]


@pytest.mark.parametrize("values,message", [
    ({"labels": ["a", "b,c", ""]}, "row 3 has an empty label set"),
    ({"labels": [["a"], []]}, "row 2 has an empty label set"),
    ({"labels": [1, 2]}, "not a list"),
    ({"labels": [[["a"]], [["b"]]]}, "a list of lists"),
])
def test_bad_label_sets_are_refused_naming_the_row(values, message):
    with pytest.raises(UserError, match=message):
        multi_label_names_from(Dataset.from_dict(values), "labels", ",", what="train.csv")


def test_an_unknown_label_is_refused():
    with pytest.raises(UserError, match=r"valid row 2 has label 'd', not one of the model's labels \(a, b\)"):
        to_indicators(Dataset.from_dict({"labels": ["a", "b,d"]}), "labels", ["a", "b"], ",", "valid")


def _random_predictions(n=300, labels=4, seed=0):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, labels)) < 0.35).astype(np.int8)
    truth[:, 3] = 0  # a label with no positive evaluation sample
    scores = np.clip(truth * 0.35 + rng.random((n, labels)) * 0.65, 0, 1).astype(np.float32)
    losses = rng.random(n).astype(np.float32)
    return Predictions((scores >= 0.5).astype(np.int8), truth, losses, multi_label_probabilities(scores))


def test_the_multi_label_report_equals_scikit_learn_on_the_same_arrays():
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        classification_report,
        f1_score,
        hamming_loss,
        log_loss,
        roc_auc_score,
    )

    predictions = _random_predictions()
    names = ["a", "b", "c", "d"]
    report = build_report(predictions, names)
    y, p, s = predictions.labels, predictions.predictions, predictions.probabilities.full
    expected = classification_report(y, p, target_names=names, output_dict=True, zero_division=0)
    for row in (*names, "micro avg", "macro avg", "weighted avg", "samples avg"):
        assert report.metrics[row] == expected[row]
    assert report.metrics["accuracy"] == accuracy_score(y, p)  # subset accuracy
    assert report.metrics["micro_f1"] == f1_score(y, p, average="micro")
    assert report.metrics["samples_f1"] == f1_score(y, p, average="samples", zero_division=0)
    assert report.metrics["hamming_loss"] == hamming_loss(y, p)
    assert report.metrics["log_loss"] == pytest.approx(log_loss(y.ravel(), s.ravel().astype(float)), rel=1e-12)
    # ROC AUC and average precision over the labels with positives and negatives ("d" has no positive)
    assert report.metrics["roc_auc"] == pytest.approx(roc_auc_score(y[:, :3], s[:, :3], average="macro"))
    assert report.metrics["average_precision"] == pytest.approx(average_precision_score(y[:, :3], s[:, :3]))
    assert "3 of 4 labels" in report.metrics["ranking_labels"]
    assert report.metrics["decision_thresholds"] == {n: 0.5 for n in names}
    assert report.confusion.shape == (4, 2, 2) and "subset accuracy" in report.text
    assert report.summary()["eval_micro_f1"] == report.metrics["micro_f1"]


def test_the_best_f1_threshold_beats_every_other_cut():
    rng = np.random.default_rng(1)
    for _ in range(20):
        truth = rng.random(60) < 0.3
        scores = np.round(np.clip(truth * 0.3 + rng.random(60) * 0.7, 0, 1), 2)  # ties included
        threshold = best_f1_threshold(scores, truth)
        f1 = lambda t: 2 * (truth & (scores >= t)).sum() / ((scores >= t).sum() + truth.sum())  # noqa: E731
        assert all(f1(threshold) >= f1(t) for t in np.unique(scores))
        assert not np.isin(threshold, scores) or threshold == 0.5  # halfway between two probabilities
    assert best_f1_threshold(np.array([0.9, 0.1]), np.array([False, False])) == 0.5  # no positive: 0.5


def test_thresholds_decide_the_predictions_and_raise_micro_f1():
    from sklearn.metrics import f1_score

    predictions = _random_predictions(seed=3)
    thresholds = fit_thresholds(predictions.probabilities.full, predictions.labels)
    decided = decide(predictions, thresholds)
    assert (decided.predictions == (predictions.probabilities.full >= thresholds)).all()
    before = f1_score(predictions.labels, predictions.predictions, average="micro")
    assert f1_score(decided.labels, decided.predictions, average="micro") > before
    report = build_report(decided, ["a", "b", "c", "d"])
    assert report.metrics["decision_thresholds"]["a"] == pytest.approx(float(thresholds[0]))
    assert "decision thresholds" in report.text and "per label" in report.text


def _write_tagged(path, rows: int, seed: int, as_lists: bool = False) -> None:
    """Texts about one or two of the generated topics, labelled with those topics."""
    rng = random.Random(seed)
    records = []
    for _ in range(rows):
        topics = sorted(rng.sample(sorted(TOPICS), rng.choice([1, 1, 2])))
        words = rng.choices(FILLER, k=rng.randint(4, 10)) + [w for t in topics for w in rng.sample(TOPICS[t], 2)]
        rng.shuffle(words)
        records.append({"text": " ".join(words), "tags": topics if as_lists else ",".join(topics)})
    if as_lists:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["text", "tags"])
        writer.writeheader()
        writer.writerows(records)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tagged")
    _write_tagged(folder / "train.csv", 240, 0)
    _write_tagged(folder / "valid.jsonl", 60, 1, as_lists=True)
    _write_tagged(folder / "test.csv", 25, 2)
    return folder


MULTI_ARGS = ["--problem_type", "multi_label_classification", "--label_column", "tags", "--num_train_epochs", "4",
              "--mixed_precision", "no", "--decision_threshold", "auto"]


def _predicted_sets(path) -> tuple[list[str], np.ndarray, list[str]]:
    rows = list(csv.DictReader(open(path)))
    names = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    return [r["labels"] for r in rows], np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows]), names


@pytest.mark.slow
def test_multi_label_text_runs_equal_on_one_and_two_processes_and_predict_uses_the_thresholds(tmp_path, tagged):
    reports = []
    for config, micro in (("cpu.yaml", "16"), ("cpu_2proc.yaml", "8")):
        out = tmp_path / config
        args = ["--train_file", str(tagged / "train.csv"), "--validation_file", str(tagged / "valid.jsonl"),
                "--output_dir", str(out), *MULTI_ARGS, "--per_device_train_batch_size", micro, "--do_predict",
                "--test_file", str(tagged / "test.csv")]
        if config == "cpu.yaml":  # one process: in this one; two: a forked 2-process gloo group (no launcher)
            assert run_recipe_in_process("text_classification", *args) == 0
        else:
            run_script_in_group(TEXT, *args)
        reports.append(read_json(out / "report.json"))
    one, two = reports
    floats = {"log_loss", "roc_auc", "average_precision", "decision_thresholds"}
    assert {k: v for k, v in one.items() if k not in floats} == {k: v for k, v in two.items() if k not in floats}
    for key in ("log_loss", "roc_auc", "average_precision"):
        assert one[key] == pytest.approx(two[key], rel=1e-6)
    assert one["samples avg"]["support"] == sum(len(json.loads(line)["tags"])  # every label of every sample once
                                                for line in (tagged / "valid.jsonl").read_text().splitlines())
    assert one["micro avg"]["f1-score"] > 0.9 and set(one) >= {"micro_f1", "samples_f1", "hamming_loss"}
    run = tmp_path / "cpu.yaml"
    saved = read_json(run / "thresholds.json")["thresholds"]
    assert saved == pytest.approx(one["decision_thresholds"]) and list(saved) == sorted(TOPICS)
    assert read_json(run / "labels.json") == sorted(TOPICS)
    assert "baseline_micro_f1" in read_json(run / "summary.json")
    # predictions.csv: the labels whose probability reaches their saved threshold
    sets, probabilities, names = _predicted_sets(run / "predictions.csv")
    assert names == sorted(TOPICS) and len(sets) == 25
    cut = np.array([saved[n] for n in names])
    assert sets == [",".join(n for n, hit in zip(names, row) if hit) for row in probabilities >= cut - 5e-7]
    sets_two, probabilities_two, _ = _predicted_sets(tmp_path / "cpu_2proc.yaml" / "predictions.csv")
    assert sets_two == sets and np.allclose(probabilities_two, probabilities, atol=2e-6)  # predict on 2 processes
    # a --model_path run predicts with the saved thresholds, a fixed one overrides them
    again = tmp_path / "again"
    assert run_recipe_in_process("text_classification", "--model_path", str(run), "--do_train", "false",
                                 "--do_eval", "false", "--do_predict", "--test_file", str(tagged / "test.csv"),
                                 "--output_dir", str(again), "--label_column", "tags") == 0  # problem type: the run's
    assert (again / "predictions.csv").read_text() == (run / "predictions.csv").read_text()
    assert yaml.safe_load((again / "config.yaml").read_text())["problem_type"] == "multi_label_classification"
    high = tmp_path / "high"
    assert run_recipe_in_process("text_classification", "--model_path", str(run), "--do_train", "false",
                                 "--do_eval", "false", "--do_predict", "--test_file", str(tagged / "test.csv"),
                                 "--output_dir", str(high), "--problem_type", "multi_label_classification",
                                 "--label_column", "tags", "--decision_threshold", "0.999") == 0
    sets, probabilities, names = _predicted_sets(high / "predictions.csv")
    assert sets == [",".join(n for n, hit in zip(names, row) if hit) for row in probabilities >= 0.999 - 5e-7]


@pytest.mark.parametrize("case", ["unknown", "empty", "numbers"])
def test_bad_multi_label_files_stop_with_one_line_and_create_nothing(tmp_path, tagged, capsys, case):
    from recipes import text_classification

    valid = tmp_path / "valid.csv"
    rows = {"unknown": "text,tags\nthe match,sports\na new app,\"tech,weather\"\n",
            "empty": 'text,tags\nthe match,sports\na new app,"[]"\n',
            "numbers": "text,tags\nthe match,1\na new app,2\n"}[case]
    if case == "empty":  # a JSON list that is empty
        valid = tmp_path / "valid.jsonl"
        rows = '{"text": "the match", "tags": ["sports"]}\n{"text": "a new app", "tags": []}\n'
    if case == "numbers":  # typed numbers (a CSV cell is text as written: "1" there names the label "1")
        valid = tmp_path / "valid.jsonl"
        rows = '{"text": "the match", "tags": 1}\n{"text": "a new app", "tags": 2}\n'
    valid.write_text(rows)
    out = tmp_path / "out"
    argv = ["--train_file", str(tagged / "train.csv"), "--validation_file", str(valid), "--output_dir", str(out),
            *MULTI_ARGS]
    assert run_main(lambda: text_classification.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert {"unknown": "not one of the model's labels", "empty": "empty label set",
            "numbers": "not a list"}[case] in err[0]
    assert not out.exists()


def _draw_shapes(shapes: list[str], rng: random.Random):
    """A 32x32 image with each of `shapes` drawn small in its own half (left, right)."""
    from PIL import Image, ImageDraw

    from helpers import paint_shape

    image = Image.new("RGB", (32, 32), tuple(rng.randint(0, 80) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for half, shape in zip(rng.sample([0, 16], len(shapes)), shapes):
        size = rng.randint(9, 13)
        x, y = half + rng.randint(1, 15 - size), rng.randint(1, 31 - size)
        paint_shape(draw, shape, x, y, size, tuple(rng.randint(150, 255) for _ in range(3)))
    return image


def _write_shape_folder(folder, count: int, seed: int, metadata: bool = True) -> None:
    from helpers import SHAPES

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    rows = []
    for i in range(count):
        shapes = sorted(rng.sample(SHAPES, rng.choice([1, 2])))
        _draw_shapes(shapes, rng).save(folder / f"{i:03d}.png")
        rows.append((f"{i:03d}.png", ",".join(shapes)))
    if metadata:
        with open(folder / "metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "shapes"])
            writer.writerows(rows)


@pytest.mark.slow
def test_multi_label_image_runs_equal_on_one_and_two_processes(tmp_path):
    from helpers import IMAGES, SHAPES

    data = tmp_path / "data"
    _write_shape_folder(data / "train", 96, 0)
    _write_shape_folder(data / "valid", 32, 1)
    _write_shape_folder(data / "test", 6, 2, metadata=False)
    reports = []
    for config, micro in (("cpu.yaml", "16"), ("cpu_2proc.yaml", "8")):
        out = tmp_path / config
        args = ["--train_dir", str(data / "train"), "--validation_dir", str(data / "valid"), "--output_dir", str(out),
                "--problem_type", "multi_label_classification", "--label_column", "shapes", "--num_train_epochs", "2",
                "--channels", "8", "--groups", "4", "--dropout", "0", "--mixed_precision", "no",
                "--per_device_train_batch_size", micro, "--do_predict", "--test_dir", str(data / "test"),
                "--baseline", "false"]
        if config == "cpu.yaml":  # one process: in this one; two: a forked 2-process gloo group (no launcher)
            assert run_recipe_in_process("image_classification", *args) == 0
        else:
            run_script_in_group(IMAGES, *args)
        reports.append(read_json(out / "report.json"))
    one, two = reports
    floats = {"log_loss", "roc_auc", "average_precision"}
    assert {k: v for k, v in one.items() if k not in floats} == {k: v for k, v in two.items() if k not in floats}
    for key in floats:
        assert one[key] == pytest.approx(two[key], rel=1e-5)
    written = list(csv.DictReader(open(data / "valid" / "metadata.csv")))
    assert one["samples avg"]["support"] == sum(len(r["shapes"].split(",")) for r in written)
    assert list(one)[:3] == sorted(SHAPES)  # one report row per label
    sets, probabilities, names = _predicted_sets(tmp_path / "cpu.yaml" / "predictions.csv")
    assert names == sorted(SHAPES) and len(sets) == 6
    assert sets == [",".join(n for n, hit in zip(names, row) if hit) for row in probabilities >= 0.5]


def _write_binary(path, rows: int, seed: int) -> None:
    """Texts about sports or food (a binary task), a few of them ambiguous."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(rows):
            topic = rng.choice(["food", "sports"])
            other = "sports" if topic == "food" else "food"
            words = rng.choices(FILLER, k=6) + rng.sample(TOPICS[topic], 1) + rng.sample(TOPICS[other], rng.randint(0, 1))
            writer.writerow([" ".join(words), topic])


def test_a_binary_threshold_is_tuned_saved_and_decides_predict(tmp_path, capsys):
    from recipes import text_classification

    for name, rows, seed in (("train", 160, 0), ("valid", 60, 1), ("test", 30, 2)):
        _write_binary(tmp_path / f"{name}.csv", rows, seed)
    out = tmp_path / "out"
    argv = ["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "valid.csv"),
            "--output_dir", str(out), "--num_train_epochs", "3", "--decision_threshold", "auto", "--do_predict",
            "--test_file", str(tmp_path / "test.csv"), "--baseline", "false"]
    assert run_main(lambda: text_classification.main(argv)) == 0, capsys.readouterr().err
    saved = read_json(out / "thresholds.json")["thresholds"]
    assert list(saved) == ["sports"] and 0 < saved["sports"] < 1  # the second class's threshold
    assert read_json(out / "report.json")["decision_thresholds"] == saved
    assert read_json(out / "summary.json")["decision_thresholds"] == saved
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["prediction"] for r in rows] == ["sports" if float(r["prob_sports"]) >= saved["sports"] - 5e-7
                                               else "food" for r in rows]
    # thresholds.json read back by --model_path is checked before anything is written
    for record, problem in (({"sports": 7}, "has threshold 7 for 'sports'; a threshold is a number in (0, 1)"),
                            ({"meal": 0.3}, "has a threshold for 'meal', which is not the positive class"),
                            ({}, "has no threshold for 'sports'")):
        (out / "thresholds.json").write_text(json.dumps({"thresholds": record}))
        capsys.readouterr()
        again = ["--model_path", str(out), "--do_train", "false", "--validation_file", str(tmp_path / "valid.csv"),
                 "--output_dir", str(tmp_path / "again")]
        assert run_main(lambda: text_classification.main(again)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"thresholds.json' {problem}" in err[0], err
        assert not (tmp_path / "again").exists()
    # labels.json that does not match the weights' outputs is named (predict-only: the classes come from it)
    (out / "thresholds.json").unlink()
    (out / "labels.json").write_text(json.dumps(["food", "sports", "weather"]))
    predict = ["--model_path", str(out), "--do_train", "false", "--do_eval", "false", "--do_predict", "--test_file",
               str(tmp_path / "test.csv"), "--output_dir", str(tmp_path / "again")]
    assert run_main(lambda: text_classification.main(predict)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels.json' lists 3 classes, but the weights have 2 outputs" in err[0], err


def test_a_threshold_for_more_than_two_classes_is_refused(tmp_path, capsys):
    from recipes import text_classification

    from helpers import write_text_split

    write_text_split(tmp_path / "train.csv", 60, 0)  # three topics
    out = tmp_path / "out"
    argv = ["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out), "--decision_threshold", "0.3"]
    assert run_main(lambda: text_classification.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --decision_threshold applies to binary (two-class) and multi-label tasks; this one has 3 "
                   "classes (its prediction is the most probable class)"]
    assert not out.exists()


@pytest.mark.parametrize("argv,message", [
    (["--decision_threshold", "1.5"], "--decision_threshold must be auto, empty, or a number in (0, 1), got '1.5'"),
    (["--problem_type", "multi_label"], "--problem_type must be single_label_classification or "
                                        "multi_label_classification, got 'multi_label'"),
    (["--problem_type", "multi_label_classification", "--label_smoothing", "0.1"], "--label_smoothing must be 0"),
    (["--problem_type", "multi_label_classification", "--metric_for_best_model", "expected_calibration_error"],
     "is not an evaluation metric"),
])
def test_bad_label_flags_are_refused_with_one_line(tmp_path, capsys, argv, message):
    from recipes import text_classification

    from helpers import write_text_split

    write_text_split(tmp_path / "train.csv", 20, 0)
    out = tmp_path / "out"
    full = ["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(out), *argv]
    assert run_main(lambda: text_classification.main(full)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()


def test_a_hub_style_list_of_class_labels_names_its_labels():
    from datasets import ClassLabel, Features, List

    features = Features({"labels": List(ClassLabel(names=["joy", "anger", "fear", "love"]))})
    train = Dataset.from_dict({"labels": [[0, 2], [1], [2]]}, features=features)
    names, split = multi_label_names_from(train, "labels", ",")
    assert names == ["joy", "anger", "fear", "love"]  # the ClassLabel's names and order, "love" unseen included
    assert split["labels"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    valid = Dataset.from_dict({"labels": [[3]]}, features=features)
    assert to_indicators(valid, "labels", names, ",", "valid")["labels"] == [[0, 0, 0, 1]]


def test_a_recipe_without_label_sets_refuses_multi_label_and_label_sets_need_the_flag(tmp_path, capsys):
    from framework import Recipe, RecipeData, TrainingConfig, run

    from helpers import run_digits_in_process

    out = tmp_path / "digits"
    assert run_digits_in_process(out, "--problem_type", "multi_label_classification", "--max_steps", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --problem_type multi_label_classification: this recipe's samples carry one class each "
                   "(labels of shape ()), not a set of labels; it does not build multi-label data"]
    assert not out.exists()
    sets = Dataset.from_dict({"x": [[0.0, 1.0]] * 4, "labels": [[1, 0], [0, 1], [1, 1], [1, 0]]}).with_format("torch")
    recipe = Recipe(TrainingConfig,
                    lambda c, t: RecipeData(["a", "b"], train=sets, eval=sets), lambda c, d: None)
    out = tmp_path / "own"
    assert run_main(lambda: run(recipe, ["--output_dir", str(out), "--max_steps", "2"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --problem_type single_label_classification: the samples carry label sets (labels of "
                   "shape (2,)); pass --problem_type multi_label_classification"]
    assert not out.exists()
