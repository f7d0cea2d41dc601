"""Data order and loaders.

Training data is cut into *windows*, one per optimizer step. Window k of an
epoch is samples [k*E, (k+1)*E) of that epoch's seeded permutation, where E is
the effective batch (micro-batch x accumulation x processes). So which samples
make up optimizer step k depends only on the seed and E, never on how E is
split into micro-batches and processes. Inside a window, slot s = j*P + p (the
j-th micro-batch of process p) holds window samples [s*b, (s+1)*b).

Every sample carries a weight: 1 for a real sample, 0 for the filler a process
gets when a short last window leaves it no real sample (it still has to join
the gradient all-reduce). The loop divides by the window's real-sample count.

Random data augmentation draws from a generator seeded by (seed, epoch, sample
index) (`sample_generator`), never from a process-global RNG: a sample is
augmented the same way whatever the split into micro-batches and processes,
whichever DataLoader worker loads it, and after a resume.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset, default_collate

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError, UserError
from framework.data.columns import require_column
from framework.data.sample_keys import sample_keys
from framework.data.table_collate import arrow_view, fetches_table

Key = tuple[int, float]  # (dataset index, sample weight)
Augment = Callable[[Any, torch.Generator], Any]  # (one sample, its generator) -> the augmented sample


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample in one epoch: the same on any split, worker or resume."""
    # SeedSequence mixes the three numbers, so nearby (epoch, index) pairs get unrelated streams.
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def accumulation_for(effective_batch: int, micro_batch: int, num_processes: int) -> int:
    """Micro-batches per process in a full window (optimizer step) of `effective_batch` samples."""
    return math.ceil(effective_batch / (micro_batch * num_processes))


def window_slots(window_size: int, micro_batch: int, num_processes: int, process_index: int) -> list[range]:
    """This process's micro-batches of a window of `window_size` samples, as positions in the window: slot
    s = j * P + p (the j-th micro-batch of process p) holds positions [s * b, (s + 1) * b). An empty range: this
    process has no real sample there and trains on filler of weight 0. Map-style and streamed data share it."""
    b, procs = micro_batch, num_processes
    per_process = math.ceil(window_size / (b * procs))
    return [range(min(s * b, window_size), min((s + 1) * b, window_size))
            for s in (j * procs + process_index for j in range(per_process))]


@dataclass(frozen=True)
class Window:
    """One optimizer step as seen by one process."""

    micro_batches: list[list[Key]]
    num_real: int  # real samples in the whole window, over all processes


class WindowPlan:
    """Deterministic assignment of training samples to optimizer steps, micro-batches and processes."""

    def __init__(self, num_samples: int, micro_batch: int, accumulation: int, num_processes: int = 1,
                 process_index: int = 0, seed: int = 0, shuffle: bool = True, effective_batch: int = 0):
        if num_samples <= 0:
            raise UserError("the training set is empty")
        self.num_samples = num_samples
        self.micro_batch = micro_batch
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        # Samples per optimizer step over all processes (the last window of an epoch may hold fewer).
        # Given explicitly, it need not be a multiple of micro-batch x processes: the last
        # micro-batch of each window is then smaller, which exact weighting makes harmless.
        self.effective_batch = effective_batch or micro_batch * accumulation * num_processes
        self.accumulation = accumulation_for(self.effective_batch, micro_batch, num_processes)

    def with_micro_batch(self, micro_batch: int) -> "WindowPlan":
        """The same windows (same effective batch, same order) cut into micro-batches of another size."""
        return WindowPlan(self.num_samples, micro_batch, 0, self.num_processes, self.process_index, self.seed,
                          self.shuffle, self.effective_batch)

    @property
    def windows_per_epoch(self) -> int:
        """Optimizer steps in one epoch: ceil(samples / effective batch)."""
        return math.ceil(self.num_samples / self.effective_batch)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's sample order: a permutation seeded by (seed, epoch), or 0..n-1 without shuffling."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def window_positions(self, start: int = 0) -> Iterator[tuple[int, int, list[range]]]:
        """For each window from `start`: its first position in the epoch's order, its size, and this process's
        micro-batches as ranges of positions in that order (an empty range: filler, see `windows`)."""
        size = self.effective_batch
        for k in range(start, self.windows_per_epoch):
            first = k * size
            length = min(size, self.num_samples - first)
            slots = window_slots(length, self.micro_batch, self.num_processes, self.process_index)
            yield first, length, [range(first + slot.start, first + slot.stop) for slot in slots]

    def windows(self, epoch: int, start: int = 0) -> Iterator[Window]:
        """Yield this process's windows of `epoch`, beginning at window `start`. A micro-batch where this process
        has no real sample holds the window's first sample with weight 0."""
        order = self.order(epoch)
        for first, length, ranges in self.window_positions(start):
            micro_batches = [[(i, 1.0) for i in order[r.start:r.stop].tolist()] or [(int(order[first]), 0.0)]
                             for r in ranges]
            yield Window(micro_batches, length)


class WeightedSamples(Dataset):
    """A view of a map-style dataset addressed by (index, weight) keys.

    Fetching a micro-batch returns (samples, weights, indices); `WeightedCollate` collates the
    samples with the recipe's collate function and adds the weights as `batch["weight"]` and
    the dataset indices as `batch["index"]` (which key per-sample dropout, framework.train.keyed_dropout).
    Keys of training batches carry the epoch too, (index, weight, epoch): then each sample
    goes through `augment` with its own `sample_generator(seed, epoch, index)`.
    """

    def __init__(self, dataset: Any, augment: Optional[Augment] = None, seed: int = 0, batched: bool = False,
                 table: bool = False):
        self.dataset = dataset
        self.augment = augment
        self.seed = seed
        self.batched = batched  # one indexed call per micro-batch, as columns (see `fetches_columns`)
        # A small set read as columns is held as tensors once: a micro-batch is then one index per column
        self.columns = in_memory_columns(dataset) if batched else None
        # one Arrow table per micro-batch, for a collate function's collate_table (framework.data.table_collate)
        self.table = arrow_view(dataset) if table else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[tuple]) -> tuple[Any, list[float], list[int] | torch.Tensor]:
        indices = [key[0] for key in keys]
        if self.columns is not None:  # the index tensor is also the batch's `index`
            rows = torch.from_numpy(np.array(indices, dtype=np.int64))
            return {name: column[rows] for name, column in self.columns.items()}, [key[1] for key in keys], rows
        if self.batched:  # the micro-batch's columns in one read, never split into rows
            return self.dataset[indices], [key[1] for key in keys], indices
        if self.table is not None:
            return self.table[indices], [key[1] for key in keys], indices
        fetch = getattr(self.dataset, "__getitems__", None)
        samples = fetch(indices) if fetch else [self.dataset[i] for i in indices]
        if self.augment is not None and keys and len(keys[0]) > 2:
            samples = [self.augment(sample, sample_generator(self.seed, epoch, index))
                       for sample, (index, _, epoch) in zip(samples, keys)]
        return samples, [key[1] for key in keys], indices


def fetches_columns(dataset: Any, collate_fn: Optional[Callable], augment: Optional[Augment] = None) -> bool:
    """Whether micro-batches of `dataset` can be read as columns, one indexed call each: a torch-formatted
    `datasets.Dataset` (its batch read gives each column as one tensor) collated by default and not augmented.
    A recipe's own collate function or augmentation gets rows, as before."""
    import datasets

    return (collate_fn is None and augment is None and isinstance(dataset, datasets.Dataset)
            and dataset.format.get("type") == "torch" and not dataset.format.get("format_kwargs"))


IN_MEMORY_BYTES = 256 << 20  # a torch-formatted set up to this size (in Arrow) is held as tensors for fetching


def in_memory_columns(dataset: Any, limit: int = IN_MEMORY_BYTES) -> Optional[dict[str, torch.Tensor]]:
    """A small torch-formatted `datasets.Dataset` (at most `limit` bytes in Arrow) as one tensor per column, read
    once, or None (larger, or a column of rows of different lengths). Reading 32 rows from Arrow costs more than
    the step of a small model; indexing a tensor costs microseconds, and gives the same values."""
    if dataset.data.nbytes > limit:
        return None
    columns = dataset[:]
    if not all(torch.is_tensor(value) and len(value) == len(dataset) for value in columns.values()):
        return None
    return dict(columns)


def collate_columns(columns: Any) -> dict[str, Any]:
    """A batch from a columnar read: each column's tensor as it is; a column the format could not stack (lists
    of different lengths) is collated row by row as `default_collate` would. Rows (a list of samples, as the
    batch-size search builds a probe) are collated by `default_collate`."""
    if not isinstance(columns, dict):
        return default_collate(columns)
    if all(torch.is_tensor(value) for value in columns.values()):
        return dict(columns)
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return default_collate(rows)


class FetchedCollate:
    """Collate what a fetch gave: columns (`WeightedSamples.batched`, `ColumnBatches`) are already the batch's
    tensors; an Arrow table goes to the recipe's `collate_table`; rows to its collate function."""

    def __init__(self, collate_fn: Optional[Callable]):
        self.collate_fn = collate_fn or default_collate

    def __call__(self, samples: Any) -> dict[str, Any]:
        if isinstance(samples, dict):
            return collate_columns(samples)
        if isinstance(samples, pa.Table):
            return self.collate_fn.collate_table(samples)
        return self.collate_fn(samples)


class WeightedCollate(FetchedCollate):
    """Collate (samples, weights, indices) into the recipe's batch plus `weight` (float32) and `index` (int64)."""

    def __call__(self, fetched: tuple[Any, list[float], list[int] | torch.Tensor]) -> dict[str, Any]:
        samples, weights, indices = fetched
        batch = super().__call__(samples)
        # through NumPy: a few microseconds less than torch.tensor of a list, per micro-batch
        batch["weight"] = torch.from_numpy(np.array(weights, dtype=np.float32))
        batch["index"] = indices if torch.is_tensor(indices) else torch.from_numpy(np.array(indices, dtype=np.int64))
        return batch


class ColumnBatches(Dataset):
    """An evaluation view of a `datasets.Dataset` that reads a batch in one call: as columns (torch-formatted; a
    small set held as tensors, `in_memory_columns`, as training holds it), or as an Arrow table (`table`, for a
    collate function's collate_table). One index still gives a row."""

    def __init__(self, dataset: Any, table: bool = False):
        self.dataset = dataset
        self.reader = arrow_view(dataset) if table else dataset
        # Reading a fixed-shape column (an image's Array3D) back from Arrow costs about 10 ms per batch of 128
        # rows in datasets' formatting, more than the digits CNN's forward pass over it: a small set is read once.
        self.columns = None if table else in_memory_columns(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> Any:
        if self.columns is not None:
            rows = torch.from_numpy(np.asarray(indices, dtype=np.int64))
            return {name: column[rows] for name, column in self.columns.items()}
        return self.reader[indices]


class _ChunkedRows:
    """Rows of in-memory columns in a given order, read a slice at a time: each column is indexed once per chunk
    of about CHUNK_BYTES (the whole epoch of a small set), and a read within the chunk is a slice of it."""

    CHUNK_BYTES = 4 << 20

    def __init__(self, columns: dict[str, torch.Tensor], indices: torch.Tensor):
        self.columns, self.indices = columns, indices
        row_bytes = sum(c[0].numel() * c.element_size() for c in columns.values()) if len(indices) else 1
        self.chunk_rows = max(1, self.CHUNK_BYTES // max(1, row_bytes))
        self.start, self.stop, self.chunk = 0, 0, {}

    def rows(self, start: int, stop: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The columns of the rows at `start:stop` of the order, and their indices in the dataset."""
        if start < self.start or stop > self.stop:
            self.start, self.stop = start, min(len(self.indices), max(stop, start + self.chunk_rows))
            rows = self.indices[self.start:self.stop]
            self.chunk = {name: column[rows] for name, column in self.columns.items()}
        a, b = start - self.start, stop - self.start
        return {name: values[a:b] for name, values in self.chunk.items()}, self.indices[start:stop]


class _WindowBatchSampler:
    """Yields the micro-batches of `plan.windows(epoch, start)` in order, for a DataLoader: (index, weight) keys,
    with the epoch as a third item where an augmentation draws from it."""

    def __init__(self, plan: WindowPlan, with_epoch: bool = True):
        self.plan = plan
        self.with_epoch = with_epoch
        self.epoch = 0
        self.start = 0

    def __iter__(self) -> Iterator[list[tuple]]:
        for window in self.plan.windows(self.epoch, self.start):
            for micro_batch in window.micro_batches:
                yield [(index, weight, self.epoch) for index, weight in micro_batch] if self.with_epoch else micro_batch

    def __len__(self) -> int:
        return sum(len(w.micro_batches) for w in self.plan.windows(self.epoch, self.start))


class TrainData:
    """Training batches grouped into windows: `for window, batches in data.epoch(e): ...`."""

    def __init__(self, dataset: Any, plan: WindowPlan, collate_fn: Optional[Callable] = None,
                 num_workers: int = 0, pin_memory: bool = False, augment: Optional[Augment] = None):
        self.plan = plan
        self.num_workers = num_workers
        self.workers_note = ""  # why this many (build_train_data: --dataloader_num_workers auto)
        self.wait_seconds = 0.0  # time spent waiting for micro-batches (framework.train.loop: data_wait_share)
        # Set (to the run's seed) when the model has KeyedDropout layers: a batch sliced from an epoch's gathered
        # rows then carries its samples' keys (`dropout_keys`), hashed for the whole epoch at once
        self.dropout_keys_seed: Optional[int] = None
        self._sampler = _WindowBatchSampler(plan, with_epoch=augment is not None)
        # Its own generator: a DataLoader draws a base seed each time an iterator starts, and
        # drawing it from the global RNG would shift the dropout stream of a resumed run.
        self.loader = DataLoader(
            WeightedSamples(dataset, augment, plan.seed, batched=fetches_columns(dataset, collate_fn, augment),
                            table=fetches_table(dataset, collate_fn, augment)),
            batch_sampler=self._sampler,
            collate_fn=WeightedCollate(collate_fn or default_collate),
            num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(plan.seed),
        )

    def collated(self, keys: list[Key]) -> dict[str, Any]:
        """The batch of these (index, weight) keys, as the loader would give it (on the host, no augmentation)."""
        return self.loader.collate_fn(self.loader.dataset.__getitems__(keys))

    def first_micro_batch(self, limit: int = 8) -> dict[str, Any]:
        """Up to `limit` samples of the first micro-batch of the first epoch, collated (for counting a
        step's FLOPs; few, so that a micro-batch the memory search has yet to shrink cannot run out)."""
        return self.collated(next(self.plan.windows(0)).micro_batches[0][:limit])

    def use_micro_batch(self, micro_batch: int) -> None:
        """Re-cut every window into micro-batches of `micro_batch` (automatic micro-batching)."""
        self.plan = self._sampler.plan = self.plan.with_micro_batch(micro_batch)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Window, Iterator[dict[str, Any]]]]:
        """Yield (window, its micro-batches) for `epoch` from window `start` on."""
        self._sampler.epoch, self._sampler.start = epoch, start
        if self.num_workers:
            batches = iter(self.loader)
        elif self.loader.dataset.columns is not None:
            batches = self._sliced_here(epoch, start)
        else:
            batches = self._fetched_here()
        for window in self.plan.windows(epoch, start):
            yield window, (self._next_timed(batches) for _ in window.micro_batches)

    def _fetched_here(self) -> Iterator[dict[str, Any]]:
        """Without workers: the loader's batches fetched and collated here, as its iterator would (the same keys,
        fetch and collate function), without its per-batch machinery (about 0.1 ms a step, the time a small model's
        step takes to run a layer or two); pinned for a CUDA device as the loader pins."""
        for keys in self._sampler:
            batch = self.collated(keys)
            yield pin_tensors(batch) if self.loader.pin_memory else batch

    def _sliced_here(self, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        """Without workers, for a set held as tensors (`in_memory_columns`): this process's samples of the epoch
        gathered in their training order a chunk at a time, each micro-batch a slice of a chunk. The batches
        `_fetched_here` gives (the same keys, values and dtypes), with one index per column per chunk instead
        of per micro-batch; a filler micro-batch (weight 0) is fetched as before."""
        columns, order = self.loader.dataset.columns, self.plan.order(epoch)
        # (its window's first position, the micro-batch's positions) for each micro-batch of this process
        micro_batches = [(first, r) for first, _, ranges in self.plan.window_positions(start) for r in ranges]
        mine = order[np.concatenate([np.arange(r.start, r.stop) for _, r in micro_batches] or [np.zeros(0, np.int64)])]
        reader = _ChunkedRows(columns, torch.from_numpy(mine.astype(np.int64)))
        ones = torch.ones(max((len(r) for _, r in micro_batches), default=0), dtype=torch.float32)
        seed = self.dropout_keys_seed
        keys = sample_keys(mine, seed, epoch) if seed is not None else None
        done = 0  # samples of `mine` already given
        for first_window, r in micro_batches:
            if not len(r):
                batch = self.collated([(int(order[first_window]), 0.0)])
                if seed is not None:
                    batch["dropout_keys"] = sample_keys(batch["index"], seed, epoch)
            else:
                batch, index = reader.rows(done, done + len(r))
                batch["weight"], batch["index"] = ones[:len(r)], index
                if keys is not None:
                    batch["dropout_keys"] = keys[done:done + len(r)]
                done += len(r)
            yield pin_tensors(batch) if self.loader.pin_memory else batch

    def _next_timed(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        """The next micro-batch; the time spent waiting for it is added to `wait_seconds`.

        On a GPU the step runs asynchronously, so this is the time the device may sit idle for
        data; on a CPU it is the time spent loading, collating and augmenting.
        """
        started = time.perf_counter()
        batch = next(batches)
        self.wait_seconds += time.perf_counter() - started
        return batch


def pin_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its tensors in pinned host memory (what a DataLoader's pin_memory does to a dict)."""
    return {key: value.pin_memory() if torch.is_tensor(value) else value for key, value in batch.items()}


AUTO_WORKERS_MIN_SAMPLES = 10_000  # --dataloader_num_workers auto: smaller sets load in the training process
AUTO_WORKERS_MAX = 8


def loader_workers(setting: str, device_type: str, num_samples: int, processes_on_node: int,
                   cores: Optional[int] = None) -> tuple[int, str]:
    """The DataLoader workers of one process for --dataloader_num_workers, and why (for the banner).

    auto: 0 on a CPU, whose cores run the training step itself (workers would take them from it); 0 for
    a set under AUTO_WORKERS_MIN_SAMPLES samples, which the training process loads faster than workers
    hand batches over; otherwise this process's share of the node's cores less one (the process itself),
    at most AUTO_WORKERS_MAX.
    """
    if setting != "auto":
        return int(setting), "as given"
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device_type != "cuda":
        return 0, f"auto: on {device_type.upper()} the training step uses the cores"
    if num_samples < AUTO_WORKERS_MIN_SAMPLES:
        return 0, f"auto: {num_samples} samples load faster in the training process"
    share = max(1, cores // max(1, processes_on_node))
    return min(AUTO_WORKERS_MAX, share - 1), f"auto: {cores} cores for {processes_on_node} processes"


def _workers(config: TrainingConfig, accelerator: Accelerator, num_samples: int) -> tuple[int, str]:
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return loader_workers(config.dataloader_num_workers, accelerator.device.type, num_samples, local)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a batch's tensors to `device` (non-blocking: pinned host memory overlaps the copy)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def build_train_data(dataset: Sequence, config: TrainingConfig, accelerator: Accelerator,
                     collate_fn: Optional[Callable] = None, shuffle: bool = True,
                     augment: Optional[Augment] = None) -> TrainData:
    """Windowed training data for this process, from the config's batch size, accumulation and seed.

    With `--total_train_batch_size` the effective batch is that number and accumulation follows from it.
    `augment(sample, generator)`, if given, transforms each training sample drawing only from
    `generator` (seeded per seed, epoch and sample index), so augmentation keeps training exact.
    """
    total = config.total_train_batch_size
    if total and total < accelerator.num_processes:
        raise FlagError("total_train_batch_size", f"{total} is smaller than the {accelerator.num_processes} processes")
    plan = WindowPlan(len(dataset), config.per_device_train_batch_size, config.gradient_accumulation_steps,
                      accelerator.num_processes, accelerator.process_index, config.seed, shuffle,
                      effective_batch=total)
    workers, why = _workers(config, accelerator, len(dataset))
    data = TrainData(dataset, plan, collate_fn, workers, pin_memory=accelerator.device.type == "cuda", augment=augment)
    data.workers_note = why
    return data


def build_eval_loader(dataset: Sequence, config: TrainingConfig, accelerator: Accelerator,
                      collate_fn: Optional[Callable] = None) -> DataLoader:
    """An evaluation DataLoader, prepared so that `gather_for_metrics` returns each sample exactly once."""
    if len(dataset) == 0:
        raise UserError("the evaluation set is empty")
    table = fetches_table(dataset, collate_fn)
    batched = table or fetches_columns(dataset, collate_fn)  # one read per batch: columns, or an Arrow table
    loader = DataLoader(ColumnBatches(dataset, table) if batched else dataset,
                        batch_size=config.per_device_eval_batch_size, shuffle=False,
                        collate_fn=FetchedCollate(collate_fn) if batched else collate_fn or default_collate,
                        num_workers=_workers(config, accelerator, len(dataset))[0],
                        pin_memory=accelerator.device.type == "cuda")
    return accelerator.prepare(loader)


def largest_sample_index(dataset: Any) -> int:
    """The index of the sample with the most elements in its variable-length columns (0 when none vary).

    Collate functions pad a batch to its longest sample, so n copies of this sample
    make the largest batch of n that the data can produce: the batch-size search
    probes with it, so that a size it accepts does not run out of memory later on a
    batch of long sequences. Only Hugging Face datasets are inspected (list columns,
    vectorized over Arrow, selections and splits respected); other datasets give 0.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(dataset, ColumnBatches):  # an evaluation loader's view: the dataset under it
        dataset = dataset.dataset
    if not isinstance(dataset, datasets.Dataset) or len(dataset) == 0:
        return 0
    table = dataset.with_format("arrow")
    names = [f.name for f in dataset.data.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    if not names:
        return 0
    total = np.zeros(len(dataset), dtype=np.int64)
    for name in names:
        total += pc.list_value_length(table[name]).fill_null(0).to_numpy()
    return int(total.argmax())


def column_values(dataset: Any, column: str) -> np.ndarray:
    """One column of a table-like dataset as a NumPy array. A `datasets.Dataset`'s column is read through Arrow in
    one call (indexing it by name yields its rows one by one: 3.7 s for 160k labels, 0.4 s this way)."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        values = dataset.with_format("arrow", columns=[column])[:][column].to_numpy(zero_copy_only=False)
        return np.asarray(values.tolist()) if values.dtype == object else values  # strings: a str array, as before
    return np.asarray(dataset[column])


def check_labels(dataset: Any, num_labels: int, column: str = "labels", name: str = "dataset") -> None:
    """Refuse a dataset without the label column or with a label outside 0..num_labels-1."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        require_column(columns, column, f"the {name}", hint="")
    labels = column_values(dataset, column) if columns is not None else np.asarray([s[column] for s in dataset])
    if len(labels) == 0:
        raise UserError(f"the {name} is empty")
    if np.issubdtype(labels.dtype, np.floating) and np.isnan(labels).any():  # an integer column with nulls
        raise UserError(f"the {name} has no label in row {int(np.isnan(labels).argmax())}; every row needs one")
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"the {name} has label {labels.flat[0].item()!r}; labels must be integers 0..{num_labels - 1}")
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if len(bad):
        raise UserError(f"the {name} has label {bad[0].item()!r}, outside the allowed 0..{num_labels - 1}")
