"""Labels mean what users mean: label values are class names whatever their type (docs/recipes.md, "Labels")."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from framework.core.errors import UserError, run_main
from framework.data.labels import class_names_from, sorted_class_names, to_class_ids

from helpers import read_json, run_digits_in_process, weights


def test_integers_are_names_not_indices():
    names, ids = class_names_from(Dataset.from_dict({"label": [1, 2, 3, 1]}), "label")
    assert names == ["1", "2", "3"] and ids["label"] == [0, 1, 2, 0]
    assert isinstance(ids.features["label"], ClassLabel) and ids.features["label"].names == names


def test_sparse_integers_give_as_many_classes_as_values():
    names, ids = class_names_from(Dataset.from_dict({"label": [0, 5, 17, 5]}), "label")
    assert names == ["0", "5", "17"] and ids["label"] == [0, 1, 2, 1]


def test_numbers_sort_numerically_and_whole_floats_name_the_same_class():
    assert sorted_class_names({"10", "2", "1"}) == ["1", "2", "10"]
    assert sorted_class_names({"b", "10", "a"}) == ["10", "a", "b"]
    names, ids = class_names_from(Dataset.from_dict({"label": [10.0, 2.0, 1.0, 2.0]}), "label")
    assert names == ["1", "2", "10"] and ids["label"] == [2, 1, 0, 1]


def test_strings_that_are_numbers_sort_numerically():
    names, _ = class_names_from(Dataset.from_dict({"label": ["10", "9", "10"]}), "label")
    assert names == ["9", "10"]


def test_fractional_labels_and_a_single_class_are_refused():
    with pytest.raises(UserError, match=r"row 2 has label 0.5, not a whole number"):
        class_names_from(Dataset.from_dict({"label": [1.0, 0.5]}), "label")
    with pytest.raises(UserError, match=r"has only the class 'x'; a classifier needs at least two"):
        class_names_from(Dataset.from_dict({"label": ["x", "x"]}), "label")
    one_of_two = Dataset.from_dict({"label": [1, 1]}, features=Features({"label": ClassLabel(names=["a", "b"])}))
    with pytest.raises(UserError, match=r"has only the class 'b'"):
        class_names_from(one_of_two, "label")


def test_class_label_features_keep_their_indices():
    data = Dataset.from_dict({"label": [1, 0, 1]}, features=Features({"label": ClassLabel(names=["neg", "pos"])}))
    names, ids = class_names_from(data, "label")
    assert names == ["neg", "pos"] and ids["label"] == [1, 0, 1]


def test_evaluation_labels_are_matched_by_name_whatever_their_type_and_order():
    names = ["1", "2", "3"]
    assert to_class_ids(Dataset.from_dict({"label": [3, 1]}), "label", names, "eval")["label"] == [2, 0]
    assert to_class_ids(Dataset.from_dict({"label": ["3", "2"]}), "label", names, "eval")["label"] == [2, 1]
    assert to_class_ids(Dataset.from_dict({"label": [2.0]}), "label", names, "eval")["label"] == [1]
    other_order = Dataset.from_dict({"label": [0, 1]}, features=Features({"label": ClassLabel(names=["3", "1"])}))
    assert to_class_ids(other_order, "label", names, "eval")["label"] == [2, 0]
    with pytest.raises(UserError, match=r"eval has label '4', not one of the model's classes \(1, 2, 3\)"):
        to_class_ids(Dataset.from_dict({"label": [4]}), "label", names, "eval")
    unlabelled = to_class_ids(Dataset.from_dict({"text": ["a"]}), "label", names, "test", required=False)
    assert unlabelled["label"] == [-1]


WORDS = {1: ["match", "goal", "team", "coach"], 2: ["bread", "soup", "oven", "sauce"],
         3: ["chip", "code", "server", "laptop"]}


def _write(path: Path, rows: int, offset: int, labels=(1, 2, 3)) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = labels[(i + offset) % len(labels)]
            key = sorted(WORDS)[labels.index(label) % 3]
            words = WORDS[key]
            writer.writerow([f"{words[i % 4]} and {words[(i + 1) % 4]} today", label])


@pytest.mark.parametrize("labels", [(1, 2, 3), (0, 5, 17)])
def test_integer_labelled_csvs_train_one_class_per_value(tmp_path, capsys, labels):
    from recipes import text_classification

    train, valid, test = tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "test.csv"
    _write(train, 60, 0, labels)
    _write(valid, 12, 1, labels)
    _write(test, 9, 2, labels)
    out = tmp_path / "out"
    argv = ["--train_file", str(train), "--validation_file", str(valid), "--output_dir", str(out),
            "--num_train_epochs", "5", "--do_predict", "--test_file", str(test)]
    assert run_main(lambda: text_classification.main(argv)) == 0, capsys.readouterr().err
    names = [str(v) for v in labels]
    assert json.loads((out / "labels.json").read_text()) == names
    report, test_report = read_json(out / "report.json"), read_json(out / "test_report.json")
    class_rows = [k for k, v in report.items() if isinstance(v, dict) and "support" in v and not k.endswith(" avg")]
    assert class_rows == names
    assert report["macro avg"]["support"] == 12 and test_report["macro avg"]["support"] == 9
    # every class present, none invented: macro F1 is the mean over the three real classes
    assert report["accuracy"] == 1.0 and report["macro avg"]["f1-score"] == 1.0
    assert test_report["accuracy"] == 1.0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["prediction"] for r in rows] == [str(labels[(i + 2) % 3]) for i in range(9)]
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{n}" for n in names]
    summary = read_json(out / "summary.json")
    assert summary["baseline_accuracy"] == 1.0  # the baseline scores the same classes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("labels") / "run"
    assert run_digits_in_process(out, "--max_steps", "6", "--checkpointing_steps", "3", "--dropout", "0",
                                 "--mixed_precision", "no") == 0
    return out


def test_auto_resume_skips_a_damaged_checkpoint_and_says_so(finished_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    weights_file = out / "checkpoints" / "step_6" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    args = ["--max_steps", "6", "--checkpointing_steps", "3", "--dropout", "0", "--mixed_precision", "no"]
    assert run_digits_in_process(out, *args, "--resume_from_checkpoint", "auto") == 0
    printed = capsys.readouterr().out
    assert f"note: --resume_from_checkpoint auto: skipping the damaged checkpoint {out}/checkpoints/step_6 " \
           f"(model.safetensors is damaged" in printed
    assert f"resumed from {out}/checkpoints/step_3 at optimizer step 3" in printed
    expected, resumed = weights(finished_run), weights(out)
    assert all((expected[k] == resumed[k]).all() for k in expected)  # resumed from step 3: bitwise the same run


def test_overwrite_goes_on_when_the_old_run_cannot_be_deleted_and_says_where_it_is(finished_run, tmp_path, capsys):
    import subprocess

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    stuck = out / "checkpoints" / "step_3" / "state.json"
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    try:
        assert run_digits_in_process(out, "--max_steps", "2", "--overwrite_output_dir", "true") == 0
        printed = capsys.readouterr().out
        left = [p for p in out.iterdir() if p.name.startswith(".replaced_run_")]
        assert len(left) == 1 and "could not be deleted" in printed and str(left[0]) in printed
        assert not (out / "checkpoints").exists()  # nothing of the old run can be resumed
        assert read_json(out / "summary.json")["optimizer_steps"] == 2
    finally:
        subprocess.run(["chattr", "-i", *map(str, out.rglob("state.json"))], capture_output=True)


def test_a_run_config_names_its_recipe_and_can_be_given_back_as_config(finished_run, tmp_path):
    import yaml

    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert next(iter(config)) == "recipe" and config["recipe"] == "digits"
    assert run_digits_in_process(tmp_path / "again", "--config", str(finished_run / "config.yaml"),
                                 "--max_steps", "1", "--checkpointing_steps", "no") == 0


def test_value_features_of_hub_style_data_are_names_too():
    data = Dataset.from_dict({"label": [0, 1, 0]}, features=Features({"label": Value("int64")}))
    names, ids = class_names_from(data, "label")
    assert names == ["0", "1"] and ids["label"] == [0, 1, 0]


def test_the_automatic_hold_out_keeps_every_class_in_training_and_holds_out_each_class_with_two_rows():
    from datasets import Dataset

    from framework.data.labels import stratified_hold_out

    labels = [f"c{i}" for i in range(300) for _ in range(2)] + ["alone"] + ["big"] * 100
    split = Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": labels})
    train, held = stratified_hold_out(split, "label", 0.1)
    assert len(train) + len(held) == len(split)
    assert set(held["text"]).isdisjoint(train["text"])
    assert set(train["label"]) == set(labels)  # no class lost to the hold-out, the single row included
    assert set(held["label"]) == set(labels) - {"alone"}
    assert held["label"].count("big") == 10  # 10% of a large class
    assert train["text"] == sorted(train["text"], key=lambda t: int(t[1:]))  # the file's order
    again = stratified_hold_out(split, "label", 0.1)[1]
    assert again["text"] == held["text"]
    sets = Dataset.from_dict({"label": [[f"l{i}", "x"] for i in range(50)]})  # every label set once: at random
    assert len(stratified_hold_out(sets, "label", 0.1)[1]) == 5
