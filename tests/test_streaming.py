"""--streaming true: the text recipe on streams (JSON Lines, Parquet, a save_to_disk folder) on 1 and 2 processes,
and each guarantee the README states for it: the samples of a step do not depend on the micro-batches or the
processes (so accumulation and 2 processes train what one big batch trains), a resume continues bitwise, each
evaluation sample counts once, and training starts without a pass over the data."""

from __future__ import annotations

import json
import shutil

import pytest
from datasets import Dataset

from framework.core.errors import run_main

from helpers import TEXT, TOPICS, max_abs_diff, read_json, run_script_in_group, weights

LABELS = ",".join(sorted(TOPICS))
STREAM = ["--streaming", "true", "--max_steps", "12", "--mixed_precision", "no", "--baseline", "false", "--seed", "3",
          "--logging_steps", "1", "--streaming_shuffle_buffer", "64", "--streaming_fit_rows", "200"]


@pytest.fixture(scope="module")
def streams(tmp_path_factory, text_files):
    """The generated topics as JSON Lines and Parquet files, and the training split saved with save_to_disk
    (its labels a ClassLabel, so the classes come with the data)."""
    folder = tmp_path_factory.mktemp("streams")
    train = Dataset.from_csv(str(text_files / "train.csv"))
    valid = Dataset.from_csv(str(text_files / "valid.csv"))
    train.to_json(str(folder / "train.jsonl"))
    valid.to_json(str(folder / "valid.jsonl"))
    valid.to_parquet(str(folder / "valid.parquet"))
    train.class_encode_column("label").save_to_disk(str(folder / "train_saved"))
    return folder


def _jsonl(streams, *more: str) -> list[str]:
    return ["--train_file", str(streams / "train.jsonl"), "--validation_file", str(streams / "valid.jsonl"),
            "--label_names", LABELS, *STREAM, *more]


def _recipe(*argv: str) -> int:
    from recipes import text_classification

    return run_main(lambda: text_classification.main(list(argv)))


@pytest.mark.slow
def test_the_samples_of_a_step_do_not_depend_on_micro_batches_or_processes(tmp_path, streams, capfd):
    """32 x 1, 8 x 4 and 2 processes x 4 x 4 read the same stream windows, so they train the same model (fp32,
    the n-gram default: within the bound the map-style data meets), and each of the 150 evaluation samples
    counts once."""
    assert _recipe(*_jsonl(streams, "--per_device_train_batch_size", "32", "--output_dir", str(tmp_path / "one"))) == 0
    assert _recipe(*_jsonl(streams, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "4",
                           "--output_dir", str(tmp_path / "accumulated"))) == 0
    capfd.readouterr()
    run_script_in_group(TEXT, *_jsonl(streams, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps",
                                      "4", "--output_dir", str(tmp_path / "two")))  # a forked 2-process gloo group
    printed = capfd.readouterr().out
    assert read_json(tmp_path / "two" / "summary.json")["world_size"] == 2
    assert max_abs_diff(tmp_path / "one", tmp_path / "accumulated") <= 1e-5
    assert max_abs_diff(tmp_path / "one", tmp_path / "two") <= 1e-5
    for run in ("one", "accumulated", "two"):
        assert read_json(tmp_path / run / "report.json")["macro avg"]["support"] == 150
    assert "(a stream: an epoch ends where the stream does)" in printed


def test_a_streamed_run_resumes_bitwise_across_an_epoch_end(tmp_path, streams):
    """Stopped at step 12 of 24 (600 rows are 18.75 steps of 32: the resumed run crosses an epoch end and
    reshuffles), it continues with the same windows as the run that never stopped."""
    args = _jsonl(streams, "--max_steps", "24", "--checkpointing_steps", "12")
    assert _recipe(*args, "--output_dir", str(tmp_path / "full")) == 0
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_12", tmp_path / "resumed" / "checkpoints" / "step_12")
    assert _recipe(*args, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "latest") == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert all(a[k].equal(b[k]) for k in a)
    assert read_json(tmp_path / "full" / "report.json") == read_json(tmp_path / "resumed" / "report.json")
    epochs = [r["epoch"] for r in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert epochs[0] == 0 and epochs[-1] == 1  # an epoch ended inside the run


def test_a_broken_line_at_the_end_of_a_large_streamed_file_is_named_before_training(tmp_path, streams, capsys):
    """A 12 MB JSON Lines file whose last line is broken: the streamed run reads the file once before training
    (its content hash, each line's JSON) and stops with one line naming that line, instead of a parser's traceback
    when training reaches it; nothing is created. Read whole (without --streaming) it is refused as well."""
    rows = (streams / "train.jsonl").read_text().splitlines()
    big = tmp_path / "big.jsonl"
    lines = 0
    with open(big, "w") as handle:
        while handle.tell() < 12 << 20:
            handle.write("\n".join(rows) + "\n")
            lines += len(rows)
        handle.write('{"text": "cut off here\n')
    data = ["--train_file", str(big), "--validation_file", str(streams / "valid.jsonl"), "--label_names", LABELS]
    capsys.readouterr()
    assert _recipe(*data, *STREAM, "--max_steps", "3", "--output_dir", str(tmp_path / "streamed")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --train_file {str(big)!r} line {lines + 1} is not valid JSON (Unterminated string "
                   f"starting at); fix or remove that line"], err
    assert not (tmp_path / "streamed").exists()
    assert _recipe(*data, "--max_steps", "3", "--baseline", "false", "--output_dir", str(tmp_path / "whole")) == 2


@pytest.mark.slow
def test_a_saved_dataset_and_parquet_stream_on_two_processes(tmp_path, streams):
    """A save_to_disk folder brings its class names (no --label_names); each Parquet evaluation row counts once."""
    run_script_in_group(TEXT, "--train_file", str(streams / "train_saved"), "--validation_file",
                        str(streams / "valid.parquet"), *STREAM, "--output_dir", str(tmp_path / "out"))
    assert read_json(tmp_path / "out" / "summary.json")["world_size"] == 2
    report = read_json(tmp_path / "out" / "report.json")
    assert report["macro avg"]["support"] == 150 and set(TOPICS) <= report.keys()
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == sorted(TOPICS)


@pytest.mark.parametrize("change, message", [
    (["--label_names", ""], "error: --label_names must list the classes (at least two, comma-separated) with "
                            "--streaming: a stream's labels are not known before a pass over it"),
    (["--max_steps", "-1"], "error: --max_steps must be set with --streaming (a stream's length, and so an epoch's "
                            "steps, is not known before a pass over it), got -1"),
    (["--label_names", "news,sports"], "error: the training data has label "),
])
def test_streaming_refuses_what_it_cannot_know_in_one_line(tmp_path, streams, capsys, change, message):
    assert _recipe(*_jsonl(streams, *change, "--output_dir", str(tmp_path / "out"))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_a_streamed_evaluation_reports_what_the_prepared_one_does(tmp_path, streams):
    """Evaluation only (--do_train false) of a trained run on the validation file, streamed and read whole: the
    same report, every sample once (no --max_steps or --label_names needed: the run brings its classes)."""
    run = tmp_path / "run"
    assert _recipe(*_jsonl(streams, "--output_dir", str(run))) == 0
    evaluate = ["--do_train", "false", "--model_path", str(run), "--validation_file", str(streams / "valid.jsonl"),
                "--baseline", "false"]
    assert _recipe(*evaluate, "--output_dir", str(tmp_path / "whole")) == 0
    assert _recipe(*evaluate, "--streaming", "true", "--output_dir", str(tmp_path / "streamed")) == 0
    whole, streamed = (read_json(tmp_path / name / "report.json") for name in ("whole", "streamed"))
    assert streamed == whole and streamed["macro avg"]["support"] == 150
