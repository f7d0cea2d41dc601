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


def _with_tags(source, target) -> None:
    """The text file with a `tags` column of label sets: its topic, and 'long' for texts of 8 words or more."""
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "tags"])
        writer.writeheader()
        for row in rows:
            tags = [row["label"]] + (["long"] if len(row["text"].split()) >= 8 else [])
            writer.writerow({"text": row["text"], "tags": ",".join(tags)})


@pytest.mark.parametrize("kind", ["ngram", "transformer", "pretrained", "multi_label"])
def test_a_micro_batch_read_as_one_table_is_padded_as_its_rows_are(tmp_path, text_files, kind):
    """The padder's collate_table (one Arrow read per micro-batch) gives the tensors its row path gives, dtypes
    included, for every kind of text model, on a selection of the rows; and the training batches of an epoch are
    the same whichever path fetched them."""
    import torch

    from framework import parse_config
    from framework.data.loaders import TrainData, WindowPlan
    from framework.data.table_collate import arrow_view
    from recipes import text_classification

    train, valid = text_files / "train.csv", text_files / "valid.csv"
    args = ["--model", kind] if kind in ("ngram", "transformer") else []
    if kind == "pretrained":
        tiny_pretrained_bert(tmp_path)
        args = ["--model_name_or_path", str(tmp_path), "--max_length", "32"]
    if kind == "multi_label":
        train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
        _with_tags(text_files / "train.csv", train)
        _with_tags(text_files / "valid.csv", valid)
        args = ["--problem_type", "multi_label_classification", "--label_column", "tags"]
    config = parse_config(text_classification.TextConfig, ["--train_file", str(train), "--validation_file", str(valid),
                                                           "--output_dir", str(tmp_path / "out"), *args])
    data = text_classification.build_data(config)
    padder = data.collate_fn
    for split in (data.train, data.eval):
        view = split.select(range(len(split) - 1, 0, -3))  # reversed, every third row: an indices mapping
        for indices in ([0, 5, 9, 2], list(range(40))):
            by_rows = padder(view.__getitems__(indices))
            by_table = padder.collate_table(arrow_view(view)[indices])
            assert by_rows.keys() == by_table.keys()
            for key in by_rows:
                assert by_rows[key].dtype == by_table[key].dtype and torch.equal(by_rows[key], by_table[key]), key
    if kind == "multi_label":
        assert by_rows["labels"].shape == (40, len(data.class_names))
    plan = WindowPlan(len(data.train), micro_batch=16, accumulation=2, seed=5)
    tables, rows = TrainData(data.train, plan, padder), TrainData(data.train, plan, lambda samples: padder(samples))
    assert tables.loader.dataset.table is not None and rows.loader.dataset.table is None
    compared = [tables, rows]
    if kind == "ngram":  # DataLoader workers read tables too
        compared.append(TrainData(data.train, plan, padder, num_workers=2))
    epochs = [[batch for _, batches in data_.epoch(1) for batch in batches] for data_ in compared]
    assert len(epochs[0]) == 2 * plan.windows_per_epoch
    for batches in epochs[1:]:
        assert len(batches) == len(epochs[0])
        for one, other in zip(epochs[0], batches):
            assert one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)
