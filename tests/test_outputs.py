"""The output directory: a replaced run leaves nothing behind, files are readable by the team, runs don't mix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, read_json, read_metrics, run_digits_in_process

SHORT = ["--mixed_precision", "no", "--logging_steps", "5"]


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_overwrite_removes_the_replaced_runs_checkpoints_and_metrics(tmp_path, capsys):
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "30", "--checkpointing_steps", "10") == 0
    assert {p.name for p in (tmp_path / "checkpoints").iterdir()} == {"step_10", "step_20", "step_30"}
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "10", "--overwrite_output_dir", "true") == 0
    assert not (tmp_path / "checkpoints").exists()
    steps = [r["step"] for r in read_metrics(tmp_path)]
    assert max(steps) == 10 and steps == sorted(steps)  # only the new run's lines
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 10
    capsys.readouterr()
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "40", "--resume_from_checkpoint", "latest") == 2
    assert "no complete checkpoint in" in _one_error_line(capsys)


def test_overwrite_removes_the_replaced_runs_own_files_too_and_nothing_else(tmp_path, text_files):
    from framework.core.errors import run_main
    from recipes import text_classification

    (tmp_path / "notes.txt").write_text("the user's own file")
    argv = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--output_dir", str(tmp_path), "--max_steps", "2", "--baseline", "false"]
    assert run_main(lambda: text_classification.main(argv)) == 0
    assert (tmp_path / "tokenizer.json").is_file()  # the recipe's own file, named in the run's manifest
    assert "tokenizer.json" in json.loads((tmp_path / ".run_outputs.json").read_text())
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "2", "--overwrite_output_dir", "true") == 0
    assert not (tmp_path / "tokenizer.json").exists()  # nothing of the replaced text run stays beside the digits run
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"


def test_an_unfinished_run_is_neither_restarted_nor_mixed_by_accident(tmp_path, capsys):
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "30", "--checkpointing_steps", "10") == 0
    (tmp_path / "summary.json").unlink()  # what a run stopped after its checkpoint at step 30 leaves
    capsys.readouterr()
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "40") == 2
    assert "holds checkpoints of an unfinished run" in _one_error_line(capsys)
    assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "40", "--resume_from_checkpoint", "auto") == 0
    assert "resumed from" in capsys.readouterr().out
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 40


def test_a_refused_run_creates_nothing(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert run_digits_in_process(out, "--resume_from_checkpoint", str(tmp_path / "no_such_step")) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_output_files_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert run_digits_in_process(tmp_path, *SHORT, "--max_steps", "10", "--checkpointing_steps", "10") == 0
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "report.json", "model.safetensors",
            "checkpoints/step_10/state.json"} <= modes.keys()
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (tmp_path / name).is_dir() else 0o644)}
    assert not wrong


def test_accumulation_and_a_total_batch_together_are_refused(tmp_path, capsys):
    assert run_digits_in_process(tmp_path, "--total_train_batch_size", "64", "--gradient_accumulation_steps", "2") == 2
    assert _one_error_line(capsys) == ("error: --gradient_accumulation_steps must be left at 1 when "
                                       "--total_train_batch_size is set (accumulation then follows from it), got 2")


def test_warmup_ratio_is_a_fraction_of_the_planned_steps(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "20", "--warmup_ratio", "0.25", "--logging_steps", "1",
                                 "--learning_rate", "0.01", "--lr_scheduler_type", "constant_with_warmup") == 0
    lrs = [r["lr"] for r in read_metrics(tmp_path) if "lr" in r]
    # 5 warmup steps (0.25 x 20): step k of them at (k + 1) / 6 of the peak, then the peak.
    assert lrs[:6] == pytest.approx([0.01 * k / 6 for k in range(1, 6)] + [0.01])
    assert lrs[6:] == pytest.approx([0.01] * 14)


@pytest.mark.slow
def test_make_train_again_replaces_the_previous_run(tmp_path):
    venv = Path(sys.executable).parent.parent
    command = ["make", "-o", f"{venv}/bin/.installed", "train", f"VENV={venv}",
               f"ARGS=--output_dir {tmp_path} --max_steps 5"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    # The first `make train`'s run, made here without the launcher's start-up: what the second one must replace.
    assert run_digits_in_process(tmp_path, "--overwrite_output_dir", "true", "--max_steps", "3") == 0
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 3
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "summary.json")["optimizer_steps"] == 5


def test_the_confusion_matrix_of_many_classes_stays_a_readable_size(tmp_path):
    """1,000 classes drawn at half an inch each would be a 50,000-pixel picture (7.6 GB in matplotlib); past
    30 classes it is a fixed-size heat map instead, while a few classes keep their counts at their own scale."""
    import numpy as np
    from PIL import Image

    from framework.io.plots import save_plots

    for classes, folder in ((1000, tmp_path / "many"), (4, tmp_path / "few")):
        folder.mkdir()
        confusion = np.random.default_rng(0).integers(0, 5, (classes, classes))
        assert save_plots(folder, [{"step": 1, "loss": 1.0}], confusion, [f"c{i}" for i in range(classes)]) is None
        with Image.open(folder / "confusion_matrix.png") as image:
            width, height = image.size
        assert width <= 1600 and height <= 1600 if classes == 1000 else 400 <= width <= 600
