"""recipes/text_classification.py offline on a generated CSV whose labels are learnable."""

from __future__ import annotations

import csv

import pytest

from framework.core.errors import run_main

from helpers import TEXT, TEXT_ARGS, accelerate_launch, in_process_result, read_json, tiny_pretrained_bert


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_text_recipe_learns_generated_topics(tmp_path, text_files, world_size, capfd):
    args = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--output_dir", str(tmp_path), *TEXT_ARGS]
    # 2 processes through the launcher; 1 in this process (a 1-process launch is test_digits_e2e's)
    result = (accelerate_launch("cpu_2proc.yaml", TEXT, *args) if world_size == 2
              else in_process_result("text_classification", args, capfd))
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "report.json")
    assert report["accuracy"] >= 0.9
    assert {"food", "sports", "tech"} <= report.keys()  # class names from the string labels
    assert report["macro avg"]["support"] == 150
    assert result.stdout.count("weighted avg") == 1
    summary = read_json(tmp_path / "summary.json")
    assert summary["world_size"] == world_size
    assert (tmp_path / "tokenizer.json").is_file() and not (tmp_path / "vocab.json").exists()
    # the baseline is scikit-learn's on the same split, computed and printed once
    expected = _sklearn_text_baseline(text_files)
    assert (summary["baseline_accuracy"], summary["baseline_macro_f1"]) == pytest.approx(expected, abs=1e-12)
    assert result.stdout.count("baseline (scikit-learn, same split): accuracy") == 1


def _sklearn_text_baseline(folder):
    """TF-IDF (word 1-2-grams, sublinear tf) + logistic regression, written here from the README's words."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    def read(name):
        with open(folder / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (train_x, train_y), (valid_x, valid_y) = read("train.csv"), read("valid.csv")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train_x), train_y)
    predicted = model.predict(vectorizer.transform(valid_x))
    return accuracy_score(valid_y, predicted), f1_score(valid_y, predicted, average="macro")


def test_text_recipe_refuses_a_missing_text_column(tmp_path, capsys):
    from recipes import text_classification

    data = tmp_path / "d.csv"
    data.write_text("sentence,label\nhello there,0\n")
    code = run_main(lambda: text_classification.main(["--train_file", str(data), "--validation_file", str(data),
                                                      "--output_dir", str(tmp_path / "out")]))
    assert code == 2
    assert "no text column 'text' (columns: sentence, label; set --text_column)" in capsys.readouterr().err


@pytest.mark.slow
def test_model_name_or_path_fine_tunes_a_pretrained_transformers_model(tmp_path, text_files):
    from recipes import text_classification

    tiny_pretrained_bert(tmp_path)
    out = tmp_path / "out"
    code = run_main(lambda: text_classification.main([
        "--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
        "--model_name_or_path", str(tmp_path), "--output_dir", str(out), "--num_train_epochs", "8",
        "--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--max_length", "32"]))
    assert code == 0
    assert read_json(out / "report.json")["accuracy"] >= 0.9
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()  # its own tokenizer, saved
    assert not (out / "vocab.json").exists()


def test_a_pretrained_fine_tune_loads_with_transformers(tmp_path, text_files):
    import torch

    from recipes import text_classification

    transformers = pytest.importorskip("transformers")
    tiny_pretrained_bert(tmp_path)
    out = tmp_path / "out"
    code = run_main(lambda: text_classification.main([
        "--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
        "--model_name_or_path", str(tmp_path), "--output_dir", str(out), "--num_train_epochs", "3",
        "--per_device_train_batch_size", "16", "--learning_rate", "2e-3", "--max_length", "32",
        "--do_predict", "true", "--test_file", str(text_files / "valid.csv")]))
    assert code == 0
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "food", 1: "sports", 2: "tech"}
    with open(text_files / "valid.csv", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
    with open(out / "predictions.csv", newline="") as handle:
        ours = [row["prediction"] for row in csv.DictReader(handle)]
    assert [model.config.id2label[i] for i in logits.argmax(-1).tolist()] == ours
    # and the run folder still works as --model_path for this framework
    again = tmp_path / "again"
    assert run_main(lambda: text_classification.main([
        "--do_train", "false", "--model_path", str(out), "--validation_file", str(text_files / "valid.csv"),
        "--output_dir", str(again)])) == 0
    assert read_json(again / "report.json") == read_json(out / "report.json")
