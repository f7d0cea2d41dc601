"""Labelled data from local files (csv, json/jsonl, parquet), refused with one line when unusable."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from datasets import Dataset, load_dataset
from datasets.utils import logging as ds_logging
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from framework.data import check_labels
from framework.errors import UserError

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No 'Generating split' bars and no logged tracebacks from `datasets` while loading one file."""
    verbosity = ds_logging.get_verbosity()
    bars_were_off = are_progress_bars_disabled()
    ds_logging.set_verbosity(ds_logging.CRITICAL)
    disable_progress_bars()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if not bars_were_off:
            enable_progress_bars()


def _root_cause(err: BaseException) -> str:
    """The first line of the innermost exception's message (the parser's own words)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_local_file(path: str, flag: str) -> Dataset:
    """One local file as a `datasets.Dataset`; `flag` names the CLI flag that gave the path (for errors)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{flag} {path!r} does not exist")
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise UserError(f"{flag} {path!r} has an unsupported extension (allowed: {', '.join(FORMATS)})")
    try:
        with quiet_datasets():
            dataset = load_dataset(kind, data_files=str(file), split="train")
    except Exception as err:  # datasets raises several types for unreadable files
        if "corresponds to no data" in str(err):  # what datasets says of a file without rows
            raise UserError(f"{flag} {path!r} holds no rows") from None
        raise UserError(f"{flag} {path!r} could not be read as {kind}: {_root_cause(err)}") from None
    if len(dataset) == 0:
        raise UserError(f"{flag} {path!r} holds no rows")
    return dataset


def _row_name(path: str, row: int) -> str:
    """How a person finds row `row` (0-based) of a data file: csv counts the header line."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return f"line {row + 2}"
    if suffix == ".jsonl":
        return f"line {row + 1}"
    return f"record {row + 1}"


def check_complete_rows(dataset: Dataset, columns: list[str], path: str, flag: str) -> None:
    """Refuse a file with a row whose value in one of `columns` is missing or blank, naming file and row."""
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    for column in columns:
        if column not in table.column_names:
            continue
        values = table[column]
        missing = pc.is_null(values)
        if values.type in ("string", "large_string"):
            missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(values), ""))
        rows = pc.indices_nonzero(missing.fill_null(True)).to_pylist()
        if rows:
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise UserError(f"{flag} {path!r} {_row_name(path, rows[0])} has no {column!r} value{more}")


def load_labelled_file(path: str, flag: str, label_column: str, num_labels: int) -> Dataset:
    """A local file whose `label_column` holds integers in 0..num_labels-1, or a one-line UserError."""
    dataset = load_local_file(path, flag)
    check_labels(dataset, num_labels, column=label_column, name=f"file {path!r}")
    return dataset
