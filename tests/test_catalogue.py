"""The catalogue of bad and surprising inputs across the three recipes (docs/errors.md).

Each case builds its inputs in a fresh folder, runs a recipe's main in this process exactly as
`python recipes/<recipe>.py ...` would, and asserts: exit code 2, exactly one line on stderr, that
line (word for word where it has no parser's own words in it), and that nothing in the folder was
created, changed or removed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from framework.core.errors import run_main
from framework.io.run_lock import RunLock

from helpers import run_digits_in_process

ROWS = ["the match was won by the home team", "a spicy soup with fresh bread", "the new laptop has a fast chip",
        "our team scored a late goal", "bake the bread in a hot oven", "the server runs the code"]
TOPICS = ["sports", "food", "tech", "sports", "food", "tech"]


def _csv(path: Path, rows: list[tuple], header: str = "text,label") -> str:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return str(path)


def _jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _good_csv(path: Path) -> str:
    return _csv(path, list(zip(ROWS, TOPICS)))


def _images(folder: Path, classes: dict[str, int], flat: int = 0) -> str:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    for i in range(flat):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"loose_{i}.png")
    return str(folder)


def _text(argv: list[str]) -> int:
    from recipes import text_classification

    return run_main(lambda: text_classification.main(argv))


def _image(argv: list[str]) -> int:
    from recipes import image_classification

    return run_main(lambda: image_classification.main(argv))


def _digits(argv: list[str]) -> int:
    from recipes import digits

    return run_main(lambda: digits.main(argv))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A finished digits run with checkpoints at steps 3 and 6."""
    out = tmp_path_factory.mktemp("catalogue") / "run"
    assert run_digits_in_process(out, "--max_steps", "6", "--checkpointing_steps", "3", "--dropout", "0",
                                 "--mixed_precision", "no") == 0
    return out


def _copy_run(digits_run: Path, tmp: Path) -> Path:
    out = tmp / "run"
    shutil.copytree(digits_run, out)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each case: (id, recipe, setup(tmp, digits_run) -> argv, expected line with {tmp} for the folder).
# In an expected line, "..." stands for a parser's own words (matched as anything).
Setup = Callable[[Path, Path], list[str]]


def _text_case(make_train: Callable[[Path], str], *extra: str) -> Setup:
    return lambda tmp, _: ["--train_file", make_train(tmp), "--output_dir", str(tmp / "out"), *extra]


def _image_case(make_train: Callable[[Path], str], *extra: str) -> Setup:
    return lambda tmp, _: ["--train_dir", make_train(tmp), "--validation_dir", _images(tmp / "valid", {"a": 2, "b": 2}),
                           "--output_dir", str(tmp / "out"), *extra]


def _resume_case(damage: Callable[[Path], None], spec: str) -> Setup:
    def setup(tmp: Path, digits_run: Path) -> list[str]:
        out = _copy_run(digits_run, tmp)
        damage(out)
        return ["--output_dir", str(out), "--max_steps", "6", "--checkpointing_steps", "3", "--dropout", "0",
                "--mixed_precision", "no", "--resume_from_checkpoint", spec.format(out=out)]
    return setup


def _model_path_case(damage: Callable[[Path], None], recipe_args: Callable[[Path], list[str]],
                     where: str = "") -> Setup:
    def setup(tmp: Path, digits_run: Path) -> list[str]:
        run = _copy_run(digits_run, tmp)
        damage(run)
        return [*recipe_args(tmp), "--model_path", str(run / where), "--output_dir", str(tmp / "out")]
    return setup


def _digits_eval(tmp: Path) -> list[str]:
    return ["--do_train", "false"]


def _text_eval(tmp: Path) -> list[str]:
    return ["--do_train", "false", "--validation_file", _good_csv(tmp / "valid.csv")]


def _unreadable(tmp: Path) -> str:
    folder = _images(tmp / "train", {"a": 2, "b": 2})
    (tmp / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _broken_jsonl(path: Path) -> str:
    """JSON Lines whose 7th line is cut in the middle of a record."""
    path.write_text("".join(json.dumps({"text": r, "label": t}) + "\n" for r, t in zip(ROWS, TOPICS))
                    + '{"text": "x, "label"\n')
    return str(path)


_HELD: list[RunLock] = []


def _hold(folder: Path) -> list[str]:
    """Hold `folder` as a running run would (the lock stays taken until the test session ends)."""
    lock = RunLock(folder)
    assert lock.acquire() is None
    _HELD.append(lock)
    return []


def _immutable_report(out: Path) -> None:
    subprocess.run(["chattr", "+i", str(out / "report.json")], check=True)


CASES: list[tuple[str, Callable[[list[str]], int], Setup, str]] = [
    # text files
    ("text: missing file", _text, lambda tmp, _: ["--train_file", str(tmp / "nope.csv"), "--output_dir", str(tmp / "o")],
     "error: --train_file '{tmp}/nope.csv' does not exist"),
    ("text: a directory as the file", _text, _text_case(lambda tmp: (tmp / "d").mkdir() or str(tmp / "d")),
     "error: --train_file '{tmp}/d' is a directory but not a dataset saved with save_to_disk; give one "
     ".csv/.json/.jsonl/.parquet file or such a folder"),
    ("text: unsupported extension", _text, _text_case(lambda tmp: _csv(tmp / "t.txt", [("a b", "x")])),
     "error: --train_file '{tmp}/t.txt' has an unsupported extension (allowed: .csv, .json, .jsonl, .parquet)"),
    ("text: header only", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [])),
     "error: --train_file '{tmp}/t.csv' holds no rows"),
    ("text: broken json", _text, _text_case(lambda tmp: (tmp / "t.json").write_text("{not json") and str(tmp / "t.json")),
     "error: --train_file '{tmp}/t.json' could not be read as json: ..."),
    ("text: no label column", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", "x")], "text,y")),
     "error: the training data has no label column 'label' (columns: text, y; set --label_column)"),
    ("text: no text column", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", "x")], "body,label")),
     "error: the training data has no text column 'text' (columns: body, label; set --text_column)"),
    ("text: one row and no evaluation file", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", "x")])),
     "error: --train_file '{tmp}/t.csv' holds 1 row: too few to hold 10% out for evaluation; give --validation_file, "
     "or --do_eval false"),
    ("text: a row without a label", _text,
     _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", "x"), ("c d", ""), ("e f", "y")])),
     "error: --train_file '{tmp}/t.csv' line 3 has no 'label' value"),
    ("text: a blank text", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", "x"), ("  ", "y")])),
     "error: --train_file '{tmp}/t.csv' line 3 has no 'text' value"),
    ("text: a number as the text", _text,
     _text_case(lambda tmp: _jsonl(tmp / "t.jsonl", [{"text": 42, "label": "a"}, {"text": 7, "label": "b"}])),
     "error: --train_file '{tmp}/t.jsonl' line 1 has 'text' 42 (a number); the text must be a string"),
    ("text: a list as the text", _text,
     _text_case(lambda tmp: _jsonl(tmp / "t.jsonl", [{"text": ["a", "b"], "label": "a"}, {"text": ["c"], "label": "b"}])),
     "error: --train_file '{tmp}/t.jsonl' line 1 has 'text' ['a', 'b'] (a list); the text must be a string"),
    ("text: a list as the label", _text,
     _text_case(lambda tmp: _jsonl(tmp / "t.jsonl", [{"text": "a b", "label": [1]}, {"text": "c", "label": [2]}])),
     "error: --train_file '{tmp}/t.jsonl' line 1 has 'label' [1] (a list); a label must be one value "
     "(a class name or number)"),
    ("text: fractional labels", _text,
     _text_case(lambda tmp: _csv(tmp / "t.csv", [("a b", 1.0), ("c d", 2.5), ("e f", 1.0)])),
     "error: --train_file '{tmp}/t.csv' line 3 has 'label' 2.5, not a whole number: labels are class names, and "
     "fractional values are a regression target, not classes"),
    ("text: column-oriented json", _text,
     _text_case(lambda tmp: (tmp / "t.json").write_text(json.dumps({"text": ROWS, "label": TOPICS}))
                and str(tmp / "t.json")),
     "error: --train_file '{tmp}/t.json' holds one object whose values are lists (column-oriented JSON); write one "
     "object per row (JSON Lines, or a JSON list of objects)"),
    ("text: one class", _text, _text_case(lambda tmp: _csv(tmp / "t.csv", [(r, "sports") for r in ROWS]),
                                          "--baseline", "false"),
     "error: --train_file '{tmp}/t.csv' has only the class 'sports'; a classifier needs at least two classes in its "
     "training data"),
    ("text: an evaluation label the model lacks", _text,
     lambda tmp, _: ["--train_file", _good_csv(tmp / "t.csv"), "--output_dir", str(tmp / "out"),
                     "--validation_file", _csv(tmp / "v.csv", [("a ball game", "sports"), ("a stock market", "money")])],
     "error: --validation_file '{tmp}/v.csv' has label 'money', not one of the model's classes (food, sports, tech)"),
    ("text: integer evaluation label the model lacks", _text,
     lambda tmp, _: ["--train_file", _csv(tmp / "t.csv", [(r, i % 3 + 1) for i, r in enumerate(ROWS)]),
                     "--output_dir", str(tmp / "out"), "--validation_file", _csv(tmp / "v.csv", [("a b c", 0)])],
     "error: --validation_file '{tmp}/v.csv' has label '0', not one of the model's classes (1, 2, 3)"),
    ("text: a number as a test text", _text,
     lambda tmp, _: ["--train_file", _good_csv(tmp / "t.csv"), "--output_dir", str(tmp / "out"), "--do_predict",
                     "--test_file", _jsonl(tmp / "test.jsonl", [{"text": 3}])],
     "error: --test_file '{tmp}/test.jsonl' line 1 has 'text' 3 (a number); the text must be a string"),
    ("text: --model_path of another recipe", _text, _model_path_case(lambda run: None, _text_eval),
     "error: --model_path '{tmp}/run' is a run of the digits recipe; this is text_classification (use "
     "recipes/digits.py with it, or a run of this recipe)"),
    ("text: --model_path without weights", _text,
     lambda tmp, _: [*_text_eval(tmp), "--model_path", str(tmp), "--output_dir", str(tmp / "out")],
     "error: --model_path '{tmp}' holds no model.safetensors (give a finished run's output_dir or a checkpoint "
     "folder)"),
    # image folders
    ("image: images not in class folders", _image, _image_case(lambda tmp: _images(tmp / "train", {}, flat=3)),
     "error: --train_dir '{tmp}/train' holds images directly in it ('loose_0.png'); put them in one sub-folder per "
     "class: {tmp}/train/<class>/<image>"),
    ("image: nested class folders", _image,
     _image_case(lambda tmp: _images(tmp / "train", {"a/x": 2, "b/y": 2}) and str(tmp / "train")),
     "error: --train_dir '{tmp}/train' has a folder inside its class folder 'a' (a/x); expected one level of class "
     "folders: {tmp}/train/<class>/<image>"),
    ("image: a file as the folder", _image, _image_case(lambda tmp: _csv(tmp / "t.csv", [])),
     "error: --train_dir '{tmp}/t.csv' is a file; give a folder with one sub-folder of images per class "
     "(--train_dir DIR with DIR/<class>/<image>)"),
    ("image: missing folder", _image, _image_case(lambda tmp: str(tmp / "nope")),
     "error: --train_dir '{tmp}/nope' does not exist"),
    ("image: empty folder", _image, _image_case(lambda tmp: (tmp / "empty").mkdir() or str(tmp / "empty")),
     "error: --train_dir '{tmp}/empty' holds no images (...)"),
    ("image: one class", _image, _image_case(lambda tmp: _images(tmp / "train", {"a": 3})),
     "error: --train_dir '{tmp}/train' has only the class folder 'a'; a classifier needs at least two classes in its "
     "training data"),
    ("image: an evaluation class the model lacks", _image,
     lambda tmp, _: ["--train_dir", _images(tmp / "train", {"a": 2, "b": 2}), "--validation_dir",
                     _images(tmp / "valid", {"a": 1, "c": 1}), "--output_dir", str(tmp / "out")],
     "error: the evaluation data has label 'c', not one of the model's classes (a, b)"),
    ("image: an unreadable image", _image, _image_case(_unreadable),
     "error: the training data has 1 unreadable image(s), the first '{tmp}/train/b/broken.png' (...); fix or remove "
     "them, or pass --skip_bad_images true to leave them out"),
    ("image: --model_path of the text... of digits", _image,
     _model_path_case(lambda run: None, lambda tmp: ["--do_train", "false", "--validation_dir",
                                                     _images(tmp / "valid", {"a": 1, "b": 1})]),
     "error: --model_path '{tmp}/run' is a run of the digits recipe; this is image_classification (use "
     "recipes/digits.py with it, or a run of this recipe)"),
    # checkpoints
    ("checkpoint: latest with truncated weights", _digits,
     _resume_case(lambda out: _truncate(out / "checkpoints/step_6/model.safetensors"), "latest"),
     "error: --resume_from_checkpoint latest: the newest checkpoint '{tmp}/run/checkpoints/step_6' is damaged "
     "(model.safetensors is damaged (Error while deserializing header: ...)); use --resume_from_checkpoint auto to "
     "resume from the newest undamaged one, or remove it"),
    ("checkpoint: a folder without trainer.pt", _digits,
     _resume_case(lambda out: (out / "checkpoints/step_3/trainer.pt").unlink(), "{out}/checkpoints/step_3"),
     "error: --resume_from_checkpoint '{tmp}/run/checkpoints/step_3' is damaged (trainer.pt is missing); give "
     "another checkpoint folder, or 'auto' for the newest undamaged one"),
    ("checkpoint: unreadable state.json", _digits,
     _resume_case(lambda out: (out / "checkpoints/step_3/state.json").write_text("{\"state\": "),
                  "{out}/checkpoints/step_3"),
     "error: --resume_from_checkpoint '{tmp}/run/checkpoints/step_3' is damaged (state.json is not readable JSON "
     "(...)); give another checkpoint folder, or 'auto' for the newest undamaged one"),
    ("checkpoint: truncated trainer.pt", _digits,
     _resume_case(lambda out: _truncate(out / "checkpoints/step_6/trainer.pt"), "latest"),
     "error: --resume_from_checkpoint latest: the newest checkpoint '{tmp}/run/checkpoints/step_6' is damaged "
     "(trainer.pt is damaged (File is not a zip file)); use --resume_from_checkpoint auto to resume from the "
     "newest undamaged one, or remove it"),
    ("checkpoint: --model_path with truncated weights", _digits,
     _model_path_case(lambda run: _truncate(run / "model.safetensors"), _digits_eval),
     "error: --model_path '{tmp}/run': model.safetensors is damaged (Error while deserializing header: ...); give "
     "another run or checkpoint folder"),
    ("checkpoint: --model_path checkpoint with truncated weights", _digits,
     _model_path_case(lambda run: _truncate(run / "checkpoints/step_3/model.safetensors"), _digits_eval,
                      "checkpoints/step_3"),
     "error: --model_path '{tmp}/run/checkpoints/step_3': model.safetensors is damaged (...); give another run or "
     "checkpoint folder"),
    ("checkpoint: --model_path with damaged labels.json", _digits,
     _model_path_case(lambda run: (run / "labels.json").write_text("[\"0\", "), _digits_eval),
     "error: --model_path '{tmp}/run': {tmp}/run/labels.json is damaged (...); train the run again"),
    ("checkpoint: --model_path with damaged config.yaml", _digits,
     _model_path_case(lambda run: (run / "config.yaml").write_text("seed: [1\n"), _digits_eval),
     "error: --model_path '{tmp}/run': {tmp}/run/config.yaml is damaged (...); train the run again"),
    ("text: NaN as a label", _text,
     _text_case(lambda tmp: (tmp / "t.jsonl").write_text('{"text": "a b", "label": 1}\n{"text": "c d", "label": NaN}\n'
                                                        '{"text": "e f", "label": 2}\n') and str(tmp / "t.jsonl")),
     "error: --train_file '{tmp}/t.jsonl' line 2 has 'label' NaN, which names no class; give every row its label"),
    ("text: a missing label after quoted newlines (the physical line)", _text,
     _text_case(lambda tmp: (tmp / "t.csv").write_text('text,label\n"a\nb c",x\nd e,y\n"f\ng\nh",x\ni j,\n')
                and str(tmp / "t.csv")),
     "error: --train_file '{tmp}/t.csv' line 8 has no 'label' value"),
    ("text: a broken line in a streamed file", _text,
     lambda tmp, _: ["--train_file", _broken_jsonl(tmp / "t.jsonl"), "--validation_file", _good_csv(tmp / "v.csv"),
                     "--streaming", "true", "--max_steps", "3", "--label_names", "food,sports,tech",
                     "--output_dir", str(tmp / "out")],
     "error: --train_file '{tmp}/t.jsonl' line 7 is not valid JSON (...); fix or remove that line"),
    # files read back (--model_path) and resumes with other flags
    ("read back: labels.json with a class too many", _digits,
     _model_path_case(lambda run: (run / "labels.json").write_text(json.dumps([str(i) for i in range(11)])),
                      _digits_eval),
     "error: the data's classes ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] differ from those of --model_path "
     "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10']"),
    ("read back: a negative temperature", _digits,
     _model_path_case(lambda run: (run / "calibration.json").write_text('{"temperature": -1}'), _digits_eval),
     "error: --model_path: '{tmp}/run/calibration.json' has temperature -1; a temperature is a finite number > 0 (it "
     "scales the logits and never changes the predicted class); calibrate the run again or remove the file"),
    ("read back: a temperature of 0", _digits,
     _model_path_case(lambda run: (run / "calibration.json").write_text('{"temperature": 0}'), _digits_eval),
     "error: --model_path: '{tmp}/run/calibration.json' has temperature 0; a temperature is a finite number > 0 (it "
     "scales the logits and never changes the predicted class); calibrate the run again or remove the file"),
    ("read back: NaN as the temperature", _digits,
     _model_path_case(lambda run: (run / "calibration.json").write_text('{"temperature": NaN}'), _digits_eval),
     "error: --model_path: '{tmp}/run/calibration.json' is not valid JSON (NaN is not a JSON number); it should "
     "hold an object with \"temperature\", a number > 0"),
    ("read back: calibration.json not JSON", _digits,
     _model_path_case(lambda run: (run / "calibration.json").write_text("temperature = 2"), _digits_eval),
     "error: --model_path: '{tmp}/run/calibration.json' is not valid JSON (...); it should hold an object with "
     "\"temperature\", a number > 0"),
    ("read back: a list as calibration.json", _digits,
     _model_path_case(lambda run: (run / "calibration.json").write_text("[1.5]"), _digits_eval),
     "error: --model_path: '{tmp}/run/calibration.json' has temperature [1.5]; a temperature is a finite number > 0 "
     "(it scales the logits and never changes the predicted class); calibrate the run again or remove the file"),
    ("read back: thresholds for a 10-class model", _digits,
     _model_path_case(lambda run: (run / "thresholds.json").write_text('{"thresholds": {"1": 7}}'), _digits_eval),
     "error: --model_path: '{tmp}/run/thresholds.json' holds decision thresholds, but the model has 10 classes and "
     "one label each (thresholds decide binary and multi-label tasks); remove the file"),
    ("resume: another --learning_rate", _digits,
     lambda tmp, run: ["--output_dir", str(_copy_run(run, tmp)), "--max_steps", "6", "--checkpointing_steps", "3",
                       "--dropout", "0", "--mixed_precision", "no", "--resume_from_checkpoint", "auto",
                       "--learning_rate", "0.5"],
     "error: --learning_rate 0.5 differs from the checkpoint '{tmp}/run/checkpoints/step_6' (0.003); a resume "
     "continues with the checkpoint's optimizer state, so pass the same value, or start a new run for the new one"),
    # labels as written
    ("text: labels that differ by a trailing space", _text,
     _text_case(lambda tmp: _csv(tmp / "t.csv", 8 * list(zip(ROWS, ["sports", "food", "tech", "sports ", "food", "tech"])))),
     "error: --train_file '{tmp}/t.csv' has the labels 'sports' and 'sports ', which differ only by surrounding "
     "spaces or letter case; write each class one way in the file"),
    ("text: labels that differ by case", _text,
     _text_case(lambda tmp: _csv(tmp / "t.csv", 8 * list(zip(ROWS, ["Food", "food", "tech", "sports", "food", "tech"])))),
     "error: --train_file '{tmp}/t.csv' has the labels 'Food' and 'food', which differ only by surrounding "
     "spaces or letter case; write each class one way in the file"),
    ("text: a multi-label label containing the delimiter", _text,
     _text_case(lambda tmp: _jsonl(tmp / "t.jsonl", [{"text": r, "label": [t, "a,b"] if i == 2 else [t]}
                                                      for i, (r, t) in enumerate(zip(ROWS, TOPICS))]),
                "--problem_type", "multi_label_classification"),
     "error: --train_file '{tmp}/t.jsonl' has the label 'a,b', which contains --label_delimiter ','; rename the "
     "label or choose another --label_delimiter"),
    # output directories
    ("output: a folder another run holds", _digits,
     lambda tmp, run: _hold(_copy_run(run, tmp)) + ["--output_dir", str(tmp / "run"), "--max_steps", "2",
                                                    "--overwrite_output_dir", "true"],
     "error: --output_dir '{tmp}/run' is in use by another run: host ...; wait for it to end, stop it, or give "
     "another --output_dir (nothing of that run was changed)"),
    ("output: a finished run in the way", _digits,
     lambda tmp, run: ["--output_dir", str(_copy_run(run, tmp)), "--max_steps", "2"],
     "error: --output_dir '{tmp}/run' holds a finished run; pass --overwrite_output_dir true to replace it, "
     "--resume_from_checkpoint to continue it, or another --output_dir"),
    ("output: overwrite that cannot remove a file", _digits,
     lambda tmp, run: (_immutable_report(_copy_run(run, tmp)) or
                       ["--output_dir", str(tmp / "run"), "--max_steps", "2", "--overwrite_output_dir", "true"]),
     "error: --overwrite_output_dir: the earlier run in '{tmp}/run' cannot be replaced: report.json cannot be moved "
     "(Operation not permitted); nothing of it was changed"),
    ("output: a file as the folder", _digits,
     lambda tmp, _: ["--output_dir", _csv(tmp / "f.csv", [])],
     "error: --output_dir '{tmp}/f.csv' exists and is not a directory"),
]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name,main,setup,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys, digits_run, name, main, setup, expected):
    tmp = tmp_path / "case"
    tmp.mkdir()
    argv = setup(tmp, digits_run)
    before = _snapshot(tmp)
    try:
        code = main(argv)
        after = _snapshot(tmp)
    finally:
        for path in tmp.rglob("*.json"):  # the immutable case: let pytest clean up
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    lines = capsys.readouterr().err.strip().splitlines()
    want = expected.format(tmp=tmp)
    assert code == 2, lines
    assert len(lines) == 1, lines
    if "..." in want:  # the rest is a parser's own words
        head, tail = want.split("...")
        assert lines[0].startswith(head) and lines[0].endswith(tail), lines[0]
    else:
        assert lines[0] == want
    assert after == before


def test_the_catalogue_is_at_least_thirty_cases_over_three_recipes():
    assert len(CASES) >= 30 and {main for _, main, _, _ in CASES} == {_text, _image, _digits}
