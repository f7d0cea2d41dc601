"""Preparation that shows where it is and is done once: progress bars, and results kept for the next run.

`map_with_progress` is `Dataset.map` with one main-process bar (framework.core.progress: a tqdm bar
on a terminal, rate-limited plain lines in a log) that keeps datasets' cache: the fingerprint of
the result is taken from the dataset, the function and the map's arguments before the function is
wrapped to count, so a second run with the same data and preparation finds the cached result
(and then shows no bar: nothing is prepared). `column_batches` reads one column in batches
straight from Arrow, with a bar (tokenizer training, a pass over the rows). `cached_beside` keeps
what is not a dataset (a trained tokenizer, IDF weights) in a file beside the dataset's own cache
files, named by the dataset's fingerprint: the next run with the same data, and the other
processes of a job (they build after the main process, framework.recipe), load it instead of
computing it again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, TypeVar

from accelerate import PartialState
from datasets import Dataset
from datasets.fingerprint import Hasher

from framework.core.progress import progress_bar
from framework.data.local_files import quiet_datasets

T = TypeVar("T")
AUTO_WORKERS_MIN_ROWS = 20_000  # --preprocessing_num_workers auto: one process below this many rows


def _on_main_process() -> bool:
    return PartialState().is_main_process


def column_batches(dataset: Dataset, column: str, desc: str, batch_size: int = 10_000) -> Iterator[list]:
    """The values of `column` as Python lists of `batch_size` rows, read from Arrow (row by row through
    datasets' formatting costs 9 s a million rows), with a main-process bar of rows read."""
    bar = progress_bar(len(dataset), desc, _on_main_process(), unit="row", leave=False)
    try:
        for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=batch_size):
            yield batch.column(column).to_pylist()
            bar.update(batch.num_rows)
    finally:
        bar.close()


def _stored_rows_and_type(file: str, column: str) -> tuple[int, Any]:
    """Rows of one Arrow stream file and the type of `column` in it (None if absent); the memory map is
    touched only for batch headers."""
    import pyarrow as pa

    with pa.memory_map(file) as source:
        reader = pa.ipc.open_stream(source)
        kind = reader.schema.field(column).type if column in reader.schema.names else None
        return sum(batch.num_rows for batch in reader), kind


def arrow_batches(dataset: Dataset, column: str) -> Iterator[Any]:
    """`column` of `dataset`, one Arrow array per stored batch, in row order.

    A dataset that is just its cache files (a map's result) is read with plain file reads, not through
    datasets' memory map: mapped pages count in the process's resident memory until the kernel drops
    them, so one pass over a large prepared split (1.2 GB for a million texts) would show as that much
    more RSS. Anything else (an index mapping, a selection, a cast) is read through datasets.
    """
    import pyarrow as pa

    files = [entry["filename"] for entry in dataset.cache_files]
    plain = dataset._indices is None and bool(files) and all(Path(f).is_file() for f in files)
    if plain:
        stored = [_stored_rows_and_type(f, column) for f in files]
        plain = (sum(rows for rows, _ in stored) == len(dataset) == dataset.data.num_rows
                 and all(kind == dataset.data.schema.field(column).type for _, kind in stored))
    if not plain:
        for batch in dataset.with_format("arrow").iter(batch_size=65536):
            yield batch[column]
        return
    for file in files:
        with pa.OSFile(file) as source:
            for batch in pa.ipc.open_stream(source):
                yield batch.column(column)


def cached_beside(dataset: Dataset, key: Any, compute: Callable[[], T], save: Callable[[T, str], None],
                  load: Callable[[str], T], *, suffix: str, overwrite: bool = False) -> T:
    """`compute()`, kept in a file beside `dataset`'s cache files, named from the dataset's fingerprint
    and `key` (everything else the result depends on); loaded from there when present and not
    `overwrite`. A dataset without cache files (built in memory) is computed every time.

    Written to a temporary file and renamed into place, so a reader never sees half a file and two
    processes that write at once leave one whole file.
    """
    if not dataset.cache_files:
        return compute()
    name = f"framework-{Hasher.hash([dataset._fingerprint, key])}{suffix}"
    path = Path(dataset.cache_files[0]["filename"]).parent / name
    if path.is_file() and not overwrite:
        try:
            return load(str(path))
        except Exception:  # a damaged file (disk full when it was written): computed again, and replaced
            pass
    value = compute()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=suffix)
    os.close(handle)
    try:
        save(value, temporary)
        os.replace(temporary, path)
    except OSError:  # a read-only cache folder: the value is still good, only not kept
        Path(temporary).unlink(missing_ok=True)
    return value


def shared_work(plan: Callable[[], tuple[Any, list[T]]], work: Callable[[list[T]], list[Any]]) -> tuple[Any, list]:
    """Work done once per job, shared by its processes, which all call this together.

    The main process makes the plan: `plan()` returns (what it found, the items to work on), and every
    process receives it, so all agree on the items even where they would have seen something else (a
    cache file another job rewrote meanwhile). Process p works on items p, p + N, p + 2N, ... with
    `work(items)`, which returns a list of results; every process returns (what the plan found, the
    results of all processes: process 0's first).
    """
    state = PartialState()
    if state.num_processes == 1:
        found, items = plan()
        return found, work(items)
    from accelerate.utils import broadcast_object_list, gather_object

    box = [plan() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    found, items = box[0]
    parts = gather_object([work(items[state.process_index::state.num_processes])])
    return found, [result for part in parts for result in part]


def preparation_workers(setting: str, rows: int) -> int:
    """Worker processes for a preparation map: an integer as given, or for 'auto' every core this process
    may use (the job's other processes wait for the main one while it prepares), but one for a split of
    fewer than AUTO_WORKERS_MIN_ROWS rows, which prepares in about a second: starting workers costs more."""
    if setting != "auto":
        return max(1, min(int(setting), rows))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if rows >= AUTO_WORKERS_MIN_ROWS else 1


@contextlib.contextmanager
def _map_bar(desc: str) -> Iterator[bool]:
    """Inside the block, the one bar `Dataset.map` makes (its workers report to it too) is ours: on the
    main process only, plain lines in a log. Yields False where this datasets version makes its bar
    otherwise (datasets' own bars are then left on)."""
    import datasets.arrow_dataset as maps

    made_by = getattr(maps, "hf_tqdm", None)
    if made_by is None:
        yield False
        return

    def ours(*_: Any, total: Optional[int] = None, initial: int = 0, **__: Any) -> Any:
        return progress_bar(total or 0, desc, _on_main_process(), initial=initial, unit="sample", leave=False)

    maps.hf_tqdm = ours
    try:
        yield True
    finally:
        maps.hf_tqdm = made_by


def map_with_progress(dataset: Dataset, function: Callable[[dict[str, list]], Any], *, desc: str,
                      remove_columns: Optional[list[str]] = None, num_proc: int = 1,
                      load_from_cache_file: bool = True, batch_size: int = 1000) -> Dataset:
    """`dataset.map(function, batched=True, ...)` with a progress bar of the samples prepared (in `num_proc`
    worker processes when > 1), shown only when something is prepared: a result found in datasets' cache
    shows none.

    The result's fingerprint (its cache key) is taken from the dataset, the function and the map's
    arguments. With workers, datasets keeps one file per worker, which a run with as many workers finds
    again (the same machine, with the default auto); a run with another number prepares again.
    """
    arguments = {"remove_columns": remove_columns, "batch_size": batch_size, "batched": True}
    fingerprint = Hasher.hash([dataset._fingerprint, function, arguments])
    with _map_bar(desc) as ours, (quiet_datasets() if ours else contextlib.nullcontext()):
        return dataset.map(function, num_proc=num_proc if num_proc > 1 else None,
                           load_from_cache_file=load_from_cache_file, new_fingerprint=fingerprint, **arguments)
