"""Preparation that shows where it is: progress bars for the phases that can take minutes on a large set.

`map_with_progress` is `Dataset.map` with one main-process bar (framework.core.progress: a tqdm bar
on a terminal, rate-limited plain lines in a log) that keeps datasets' cache: the fingerprint of
the result is taken from the dataset, the function and the map's arguments before the function is
wrapped to count, so a second run with the same data and preparation finds the cached result
(and then shows no bar: nothing is prepared). `counted` puts a bar on any iterable (tokenizer
training, a pass over the prepared rows).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from accelerate import PartialState
from datasets import Dataset
from datasets.fingerprint import Hasher

from framework.core.progress import progress_bar
from framework.data.local_files import quiet_datasets

T = TypeVar("T")


def _on_main_process() -> bool:
    return PartialState().is_main_process


def counted(items: Iterable[T], total: int, desc: str, unit: str = "text") -> Iterator[T]:
    """`items`, with a main-process bar of `total` that a log shows only when the pass is long."""
    bar = progress_bar(total, desc, _on_main_process(), unit=unit, leave=False)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def map_with_progress(dataset: Dataset, function: Callable[[dict[str, list]], dict[str, Any]], *, desc: str,
                      remove_columns: Optional[list[str]] = None, num_proc: Optional[int] = None,
                      load_from_cache_file: bool = True, batch_size: int = 1000) -> Dataset:
    """`dataset.map(function, batched=True, ...)` with a progress bar of the samples prepared.

    With `num_proc` > 1 the batches run in datasets' worker processes, which cannot move this
    process's bar: datasets' own bars are left to show progress there (on a terminal).
    """
    arguments = {"remove_columns": remove_columns, "batch_size": batch_size, "batched": True}
    fingerprint = Hasher.hash([dataset._fingerprint, function, arguments])
    if num_proc and num_proc > 1:
        return dataset.map(function, num_proc=num_proc, load_from_cache_file=load_from_cache_file,
                           new_fingerprint=fingerprint, **arguments)
    bar = None

    def prepare_and_count(batch: dict[str, list]) -> dict[str, Any]:
        nonlocal bar
        if bar is None:  # created at the first batch: a cached result shows no bar at all
            bar = progress_bar(len(dataset), desc, _on_main_process(), unit="sample", leave=False)
        result = function(batch)
        bar.update(len(next(iter(batch.values()))))
        return result

    try:
        with quiet_datasets():  # datasets' own map bar off while ours counts: one bar per phase
            return dataset.map(prepare_and_count, load_from_cache_file=load_from_cache_file,
                               new_fingerprint=fingerprint, **arguments)
    finally:
        if bar is not None:
            bar.close()

