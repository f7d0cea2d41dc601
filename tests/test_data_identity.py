"""What a run trained on, by content (framework.data.identity), and label values as the file writes them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path

import yaml

from framework.core.errors import run_main

from helpers import reset_accelerate

WORDS = {"sports": ["match", "goal", "team", "coach"], "food": ["bread", "soup", "oven", "spicy"],
         "tech": ["chip", "code", "server", "app"]}
QUICK = ["--model", "ngram", "--per_device_train_batch_size", "16", "--logging_steps", "1", "--baseline", "false"]


def _write(path: Path, labels: list[str], rows: int = 120, texts: list[str] | None = None) -> Path:
    rng = random.Random(0)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(rows):
            label = labels[i % len(labels)]
            topic = sorted(WORDS)[i % len(labels) % 3]
            text = texts[i % len(texts)] if texts else " ".join(rng.choices(WORDS[topic], k=5))
            writer.writerow([text, label])
    return path


def _text(*argv: str) -> int:
    from recipes import text_classification

    reset_accelerate()
    return run_main(lambda: text_classification.main([*QUICK, *argv]))


def _labels(out: Path) -> list[str]:
    return json.loads((out / "labels.json").read_text())


def test_config_and_checkpoints_record_the_training_files_content(tmp_path):
    train = _write(tmp_path / "train.csv", ["sports", "food", "tech"])
    out = tmp_path / "run"
    assert _text("--train_file", str(train), "--output_dir", str(out), "--max_steps", "4",
                 "--checkpointing_steps", "2") == 0
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    sources = yaml.safe_load((out / "config.yaml").read_text())["data_sources"]
    assert sources == {"train_file": {"path": str(train), "sha256": digest}}
    state = json.loads((out / "checkpoints" / "step_2" / "state.json").read_text())
    assert state["identity"]["train_data"] == {"train_file": digest}


def test_a_resume_on_relabelled_data_with_its_time_restored_is_refused_and_changes_nothing(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["sports", "food", "tech"])
    out = tmp_path / "run"
    assert _text("--train_file", str(train), "--output_dir", str(out), "--max_steps", "4",
                 "--checkpointing_steps", "2") == 0
    (out / "summary.json").unlink()  # as a stopped run leaves it
    stat = train.stat()
    train.write_text(train.read_text().replace(",food", ",meal"))  # same rows, same count, other labels
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert _text("--train_file", str(train), "--output_dir", str(out), "--max_steps", "8",
                 "--checkpointing_steps", "2", "--resume_from_checkpoint", "auto") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is of a run on other training data" in err[0], err
    assert f"--train_file {str(train)!r} has other content" in err[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_file_changed_with_its_time_restored_is_read_again_not_served_from_the_cache(tmp_path):
    train = _write(tmp_path / "train.csv", ["sports", "food", "tech"])
    assert _text("--train_file", str(train), "--output_dir", str(tmp_path / "a"), "--max_steps", "2") == 0
    assert _labels(tmp_path / "a") == ["food", "sports", "tech"]
    stat = train.stat()
    train.write_text(train.read_text().replace(",food", ",meal"))
    os.utime(train, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as touch -r, cp -p, rsync -t or an archive leave it
    assert _text("--train_file", str(train), "--output_dir", str(tmp_path / "b"), "--max_steps", "2") == 0
    assert _labels(tmp_path / "b") == ["meal", "sports", "tech"]


def test_csv_labels_and_texts_are_the_strings_in_the_file(tmp_path):
    codes = _write(tmp_path / "codes.csv", ["01", "1", "02"])
    assert _text("--train_file", str(codes), "--output_dir", str(tmp_path / "codes"), "--max_steps", "2") == 0
    assert _labels(tmp_path / "codes") == ["01", "1", "02"]  # three classes, numbers ordered by value
    names = _write(tmp_path / "names.csv", ["NA", "None", "null"])
    assert _text("--train_file", str(names), "--output_dir", str(tmp_path / "names"), "--max_steps", "2") == 0
    assert _labels(tmp_path / "names") == ["NA", "None", "null"]
    texts = _write(tmp_path / "texts.csv", ["a", "b"], rows=40, texts=["null", "NaN", "None", "NA"])
    out = tmp_path / "texts"
    assert _text("--train_file", str(texts), "--validation_file", str(texts), "--output_dir", str(out),
                 "--max_steps", "2") == 0
    assert json.loads((out / "report.json").read_text())["macro avg"]["support"] == 40  # none taken for missing


def test_a_streamed_resume_on_a_replaced_file_names_the_file_not_a_shape(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", ["sports", "food", "tech"])
    stream = ["--streaming", "true", "--label_names", "food,sports,tech", "--validation_file", str(train),
              "--checkpointing_steps", "2"]
    out = tmp_path / "run"
    assert _text("--train_file", str(train), "--output_dir", str(out), "--max_steps", "4", *stream) == 0
    (out / "summary.json").unlink()
    _write(train, ["sports", "food", "tech"], texts=["other words entirely", "a new vocabulary here"])
    capsys.readouterr()
    assert _text("--train_file", str(train), "--output_dir", str(out), "--max_steps", "8",
                 "--resume_from_checkpoint", "auto", *stream) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--train_file {str(train)!r} has other content" in err[0], err
