"""Bad data files: one `error:` line naming the file and the problem, exit code 2."""

from __future__ import annotations

import pytest

from framework.core.errors import run_main
from framework.data.local_files import load_local_file


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_good_csv_and_jsonl_load(tmp_path):
    csv = load_local_file(_write(tmp_path, "a.csv", "text,label\nhi,0\nho,1\n"), "--train_file")
    jsonl = load_local_file(_write(tmp_path, "a.jsonl", '{"text": "hi", "label": 1}\n'), "--train_file")
    assert csv["label"] == [0, 1] and jsonl["text"] == ["hi"]


@pytest.mark.parametrize("name,content,message", [
    (None, None, "--train_file '{dir}/missing.csv' does not exist"),
    ("data.txt", "x", "has an unsupported extension (allowed: .csv, .json, .jsonl, .parquet)"),
    ("empty.csv", "text,label\n", "holds no rows"),
    ("broken.json", "{not json", "could not be read as json"),
])
def test_bad_data_file(tmp_path, capsys, name, content, message):
    path = _write(tmp_path, name, content) if name else str(tmp_path / "missing.csv")
    assert run_main(lambda: load_local_file(path, "--train_file")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message.format(dir=tmp_path) in err[0]


@pytest.mark.parametrize("name,content,message", [
    ("labels.csv", "text,label\nhi,a\nho,\nhu,b\n", "--train_file '{path}' line 3 has no 'label' value"),
    ("texts.csv", "text,label\nhi,a\n  ,b\n,a\n", "--train_file '{path}' line 3 has no 'text' value (and 1 more rows)"),
    ("rows.jsonl", '{"text": "hi", "label": 1}\n{"text": null, "label": 0}\n',
     "--train_file '{path}' line 2 has no 'text' value"),
])
def test_rows_without_text_or_label_are_named_by_file_and_row(tmp_path, capsys, name, content, message):
    from framework.data.local_files import check_complete_rows, load_local_file

    path = _write(tmp_path, name, content)
    assert run_main(lambda: check_complete_rows(load_local_file(path, "--train_file"), ["text", "label"], path,
                                                "--train_file")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message.format(path=path)}"]
