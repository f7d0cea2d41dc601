"""Labelled data from local files (csv, json/jsonl, parquet), refused with one line when unusable."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from datasets import Dataset, load_dataset, load_from_disk
from datasets.fingerprint import Hasher
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from datasets.utils import logging as ds_logging

from framework.core.errors import FlagError
from framework.data.identity import record_source

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SOURCE_RECORD = "framework-source.json"  # beside datasets' cache of a file: the content hash it was built from
STREAM_SHARDS = 64  # a saved dataset streamed in this many shards, so that shuffling also reorders the shards


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No bars and no logged tracebacks from `datasets` inside the block (loading a file, a map with our own bar)."""
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


def _saved_dataset(folder: Path, path: str, flag: str) -> bool:
    """Whether `folder` holds one split saved with `Dataset.save_to_disk`; a folder of several splits, or one
    that is no saved dataset, is refused with one line."""
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return True
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(d.name for d in folder.iterdir() if d.is_dir())
        raise FlagError(flag.lstrip("-"), f"{path!r} holds several splits saved with save_to_disk ({', '.join(splits)}); "
                        f"give one split's folder, e.g. {path}/{splits[0] if splits else 'train'}")
    raise FlagError(flag.lstrip("-"), f"{path!r} is a directory but not a dataset saved with save_to_disk; give one "
                    f"{'/'.join(FORMATS)} file or such a folder")


def _format_of(path: str, flag: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise FlagError(flag.lstrip("-"), f"{path!r} does not exist")
    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        raise FlagError(flag.lstrip("-"), f"{path!r} has an unsupported extension (allowed: {', '.join(FORMATS)})")
    return kind


def _csv_as_written(path: str, strings: Sequence[str]) -> dict[str, Any]:
    """pandas options that read the CSV columns `strings` as the text in the file: `01` stays `01` (not 1), and
    `NA`, `None`, `null`, `NaN` are values; only an empty cell is missing. Other columns keep pandas' defaults."""
    from pandas._libs.parsers import STR_NA_VALUES

    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    wanted = [name for name in header if name in strings]
    if not wanted:
        return {}
    defaults = sorted(STR_NA_VALUES)
    return {"converters": {name: str for name in wanted}, "keep_default_na": False,
            "na_values": {name: ([""] if name in wanted else defaults) for name in header}}


def check_stream_file(path: str, kind: str, flag: str) -> None:
    """Read a file that will be streamed once before training, so that a broken record stops the run now, with
    the file and its physical line, rather than as a parser's traceback in the middle of training: JSON Lines,
    each line one JSON value; CSV, no record with more fields than the header."""
    if kind == "json":
        with open(path, "rb") as handle:
            first = handle.read(64).lstrip()
        if first.startswith(b"["):  # one JSON list: datasets reads it whole anyway
            return
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line.rstrip("\r\n"))
                except ValueError as err:
                    reason = getattr(err, "msg", str(err))
                    raise FlagError(flag.lstrip("-"), f"{path!r} line {number} is not valid JSON ({reason}); fix or "
                                    f"remove that line") from None
    elif kind == "csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            start = reader.line_num + 1
            for record in reader:
                if len(record) > len(header):
                    raise FlagError(flag.lstrip("-"), f"{path!r} line {start} has {len(record)} fields, the header "
                                    f"{len(header)}; quote values that contain a comma")
                start = reader.line_num + 1


def load_local_stream(path: str, flag: str, strings: Sequence[str] = ()) -> Any:
    """One local file, or a folder of one split saved with `save_to_disk`, as a stream (`datasets.IterableDataset`):
    rows are read as training asks for them, nothing before. The file's content hash is recorded for the run
    (framework.data.identity); CSV columns in `strings` are read as written (see `load_local_file`)."""
    folder = Path(path)
    if folder.is_dir() and _saved_dataset(folder, path, flag):
        record_source(flag, path)
        with quiet_datasets():  # memory-mapped: opening reads no rows
            return load_from_disk(path).to_iterable_dataset(num_shards=STREAM_SHARDS)
    kind = _format_of(path, flag)
    record_source(flag, path)
    check_stream_file(path, kind, flag)
    options = _csv_as_written(path, strings) if kind == "csv" else {}
    with quiet_datasets():
        return load_dataset(kind, data_files=path, split="train", streaming=True, **options)


def _cache_is_fresh(dataset: Dataset, started: float) -> bool:
    """Whether datasets built its cache of a file during this load (its files are newer than `started`)."""
    return all(Path(entry["filename"]).stat().st_mtime >= started for entry in dataset.cache_files)


def _cache_record(dataset: Dataset) -> Optional[Path]:
    files = dataset.cache_files
    return Path(files[0]["filename"]).parent / SOURCE_RECORD if files else None


def _cached_content(dataset: Dataset) -> Optional[str]:
    """The content hash recorded beside datasets' cache of a file, or None."""
    record = _cache_record(dataset)
    try:
        return json.loads(record.read_text()).get("sha256") if record else None
    except (OSError, ValueError, AttributeError):
        return None


def _remember_content(dataset: Dataset, digest: str) -> None:
    """Record beside datasets' cache of a file the content hash it was built from."""
    record = _cache_record(dataset)
    if record is None:
        return
    temporary = record.with_name(f".{record.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps({"sha256": digest}) + "\n")
        os.replace(temporary, record)
    except OSError:  # a read-only cache: checked, and read again, next time
        temporary.unlink(missing_ok=True)


def load_local_file(path: str, flag: str, strings: Sequence[str] = (), reread: bool = False) -> Dataset:
    """One local file, or a folder of one split saved with `save_to_disk`, as a `datasets.Dataset`; `flag` names
    the CLI flag that gave the path (for errors).

    CSV columns named in `strings` (labels, texts) are read as the strings in the file (`01` and `1` are two
    values; `NA` is a value, only an empty cell is missing). The file's content hash is recorded for the run
    (framework.data.identity) and checked against datasets' cache, which is keyed by path and modification time:
    a file changed with its time restored (`touch -r`, `cp -p`, an unpacked archive) is read again. `reread`
    (--overwrite_cache) always reads it again.
    """
    file = Path(path)
    if file.is_dir() and _saved_dataset(file, path, flag):
        digest = record_source(flag, path)
        with quiet_datasets():
            dataset = load_from_disk(path)
        if len(dataset) == 0:
            raise FlagError(flag.lstrip("-"), f"{path!r} holds no rows")
        dataset._fingerprint = Hasher.hash(["saved dataset", digest])  # its state.json's fingerprint: see below
        return dataset
    kind = _format_of(path, flag)
    digest = record_source(flag, path)
    options = _csv_as_written(path, strings) if kind == "csv" else {}
    try:
        dataset = load_by_content(digest, reread, kind, data_files=str(file), split="train", **options)
    except Exception as err:  # datasets raises several types for unreadable files
        if "corresponds to no data" in str(err):  # what datasets says of a file without rows
            raise FlagError(flag.lstrip("-"), f"{path!r} holds no rows") from None
        raise FlagError(flag.lstrip("-"), f"{path!r} could not be read as {kind}: {_root_cause(err)}") from None
    if len(dataset) == 0:
        raise FlagError(flag.lstrip("-"), f"{path!r} holds no rows")
    return dataset


def load_by_content(digest: str, reread: bool, *args: Any, **kwargs: Any) -> Dataset:
    """`datasets.load_dataset(*args, **kwargs)` for local files whose bytes hash to `digest`: datasets keys its
    cache by path and modification time, so the cache is used only when a record beside it names this content
    (or this load built it), and is built again otherwise or with `reread` (--overwrite_cache). The result's
    fingerprint is keyed by the content and the arguments too: datasets derives it from the path, so the caches
    keyed by it downstream (prepared splits, a trained tokenizer) would outlive a change of content."""
    # A re-read must not check the row count against the stale cache's (verification_mode).
    reread_options = {"download_mode": "force_redownload", "verification_mode": "no_checks"}
    with quiet_datasets():
        started = time.time()
        dataset = load_dataset(*args, **kwargs, **(reread_options if reread else {}))
        if not reread and not _cache_is_fresh(dataset, started) and _cached_content(dataset) != digest:
            dataset = load_dataset(*args, **kwargs, **reread_options)
        _remember_content(dataset, digest)
    dataset._fingerprint = Hasher.hash(["local files", digest, args, sorted(kwargs.get("converters", {})),
                                        {k: v for k, v in kwargs.items() if k != "converters"}])
    return dataset


def _csv_record_line(path: str, row: int) -> int:
    """The physical line (1-based) where record `row` (0-based, after the header) of a CSV file starts: a quoted
    value may hold newlines, so records and lines differ."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        start = reader.line_num + 1
        for index, _ in enumerate(reader):
            if index == row:
                return start
            start = reader.line_num + 1
    return row + 2


def _row_name(path: str, row: int) -> str:
    """How a person finds row `row` (0-based) of a data file: its physical line in csv (the header counted, and
    newlines inside quoted values) and JSON Lines, else its record number."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return f"line {_csv_record_line(path, row)}"
    if suffix == ".jsonl":
        return f"line {row + 1}"
    return f"record {row + 1}"


def _kind(arrow_type) -> str:
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return "a list"
    if pa.types.is_struct(arrow_type) or pa.types.is_map(arrow_type):
        return "an object"
    if pa.types.is_boolean(arrow_type):
        return "a boolean"
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "a number"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "a string"
    return str(arrow_type)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_complete_rows(dataset: Dataset, columns: list[str], path: str, flag: str,
                        text_columns: tuple[str, ...] = (), multi_label: bool = False) -> None:
    """Refuse a file with a row whose value in one of `columns` is missing or blank, whose value in one of
    `text_columns` is not a string, or whose label (any other of `columns`) is not a single value (with
    `multi_label`, label sets are checked by framework.data.multi_label instead); the line names the file, the
    first bad row and what was found."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    kinds = {name: _kind(table[name].type) for name in columns if name in table.column_names}
    if len(table) == 1 and table.column_names and all(_kind(t) == "a list" for t in table.schema.types):
        raise FlagError(flag.lstrip("-"), f"{path!r} holds one object whose values are lists (column-oriented JSON); write "
                        f"one object per row (JSON Lines, or a JSON list of objects)")
    for column in columns:
        if column not in table.column_names:
            continue
        values = table[column]
        missing = pc.is_null(values)
        if kinds[column] == "a string":
            missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(values), ""))
        rows = pc.indices_nonzero(missing.fill_null(True)).to_pylist()
        if rows:
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise FlagError(flag.lstrip("-"), f"{path!r} {_row_name(path, rows[0])} has no {column!r} value{more}")
        if multi_label and column not in text_columns:
            continue
        wrong = (kinds[column] != "a string") if column in text_columns else kinds[column] in ("a list", "an object")
        if wrong:
            want = "the text must be a string" if column in text_columns else \
                "a label must be one value (a class name or number)"
            raise FlagError(flag.lstrip("-"), f"{path!r} {_row_name(path, 0)} has {column!r} {_shown(values[0].as_py())} "
                            f"({kinds[column]}); {want}")
        if column not in text_columns and kinds[column] == "a string":
            _refuse_fractional_strings(values, column, path, flag)
        if column not in text_columns and pa.types.is_floating(values.type):
            nan = pc.indices_nonzero(pc.is_nan(values).fill_null(False)).to_pylist()
            if nan:
                raise FlagError(flag.lstrip("-"), f"{path!r} {_row_name(path, nan[0])} has {column!r} NaN, which "
                                f"names no class; give every row its label")
            fractional = pc.not_equal(values, pc.round(values)).fill_null(False)
            rows = pc.indices_nonzero(pc.or_(fractional, pc.is_nan(values).fill_null(False))).to_pylist()
            if rows:
                raise FlagError(flag.lstrip("-"), f"{path!r} {_row_name(path, rows[0])} has {column!r} "
                                f"{values[rows[0]].as_py()!r}, not a whole number: labels are class names, and "
                                f"fractional values are a regression target, not classes")


def _number(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _refuse_fractional_strings(values: Any, column: str, path: str, flag: str) -> None:
    """A label column read as text (a CSV's, as written) whose every value is a number and some fractional:
    a regression target, not class names (`1.0` and `2` are names)."""
    import pyarrow.compute as pc

    distinct = [v for v in pc.unique(values).to_pylist() if v is not None]
    numbers = [_number(v) for v in distinct]
    if not distinct or any(n is None for n in numbers):
        return
    fractional = [v for v, n in zip(distinct, numbers) if not n.is_integer()]
    if fractional:
        row = pc.index(values, fractional[0]).as_py()
        raise FlagError(flag.lstrip("-"), f"{path!r} {_row_name(path, row)} has {column!r} {_number(fractional[0])!r}, "
                        f"not a whole number: labels are class names, and fractional values are a regression "
                        f"target, not classes")
