"""Streamed data: a `datasets.IterableDataset` read while training runs, with no pass before the first step.

Every process reads the same stream in the same order (datasets' shard order and shuffle buffer,
seeded by (seed, epoch)) and cuts it into windows as `WindowPlan` cuts a map-style epoch: window k
is the stream's samples [k*E, (k+1)*E) for the effective batch E, and slot s = j*P + p of it is
process p's j-th micro-batch. So the samples of optimizer step k depend only on the seed, the
shuffle buffer and E, never on how E is split into micro-batches and processes, and every real
sample weighs 1 / (real samples in its window) as in the map-style loop. The recipe shuffles the
stream (`IterableDataset.shuffle(seed, buffer_size)`) or leaves it in stored order; each epoch
reshuffles it (`set_epoch`). A process prepares
(`prepare`: tokenize, decode) only the samples it trains on; what every process repeats is reading
the raw stream. An epoch is one pass of the stream; the stream's length is not known in advance,
so a streamed run is planned in optimizer steps (`--max_steps`).

A resume reads the epoch's stream again up to the checkpoint's window (raw samples, not prepared):
bitwise, at the cost of that re-read. datasets' own `IterableDataset.state_dict` drops what is in
the shuffle buffer, so it would not continue with the same samples.

Evaluation on a stream: sample i is predicted by process i mod P, and the predictions are gathered
with their indices, so each sample counts exactly once on any number of processes.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from framework.core.config import TrainingConfig
from framework.core.errors import FlagError, UserError
from framework.data.loaders import Augment, Window, accumulation_for, sample_generator, window_slots

Prepare = Callable[[list[dict]], list[dict]]  # raw samples -> model samples (each with `labels`)
READ_AHEAD = 1024  # stream samples read (and this process's share prepared) at a time


@dataclass(frozen=True)
class StreamPlan:
    """The window plan of a stream: batch sizes and order, without a length (`num_samples` is None)."""

    micro_batch: int
    num_processes: int
    process_index: int
    seed: int
    effective_batch: int
    num_samples: Optional[int] = None
    windows_per_epoch: Optional[int] = None

    @property
    def accumulation(self) -> int:
        """Micro-batches per process in a full window."""
        return accumulation_for(self.effective_batch, self.micro_batch, self.num_processes)

    def with_micro_batch(self, micro_batch: int) -> "StreamPlan":
        """The same windows cut into micro-batches of another size."""
        return replace(self, micro_batch=micro_batch)

    def slots(self, window_size: int) -> list[range]:
        """This process's micro-batches of a window of `window_size` samples, as positions in the window
        (an empty range: this process has no real sample there and trains on filler of weight 0)."""
        return window_slots(window_size, self.micro_batch, self.num_processes, self.process_index)


class StreamingTrainData:
    """Training batches of a stream grouped into windows: `for window, batches in data.epoch(e): ...`,
    the interface of framework.data.loaders.TrainData (no DataLoader workers: the stream is read here)."""

    def __init__(self, stream: Any, plan: StreamPlan, prepare: Prepare, collate_fn: Callable,
                 augment: Optional[Augment] = None):
        self.stream, self.plan, self.prepare, self.collate_fn, self.augment = stream, plan, prepare, collate_fn, augment
        self.num_workers = 0
        self.workers_note = "a stream is read in the training process"
        self.wait_seconds = 0.0
        self.epoch_ended = False  # whether the last epoch() call read the stream to its end

    def ordered(self, epoch: int) -> Iterator[dict]:
        """The epoch's raw samples in training order (a stream the recipe shuffled is reshuffled per epoch:
        datasets seeds its shard order and buffer with seed + epoch)."""
        self.stream.set_epoch(epoch)
        return iter(self.stream)

    def _prepared(self, chosen: list[tuple[dict, int]], epoch: int) -> list[Any]:
        """Model samples of (raw sample, its position in the epoch's stream) pairs, prepared in one call."""
        samples = self.prepare([raw for raw, _ in chosen])
        if self.augment is not None:  # keyed by the sample's place in the epoch's stream
            samples = [self.augment(sample, sample_generator(self.plan.seed, epoch, position))
                       for sample, (_, position) in zip(samples, chosen)]
        return samples

    def _collated(self, samples: list[Any], real: bool, positions: Sequence[int]) -> dict[str, Any]:
        """The recipe's batch plus `weight` and `index` (the samples' positions in the epoch's stream)."""
        batch = self.collate_fn(samples)
        batch["weight"] = torch.full((len(samples),), 1.0 if real else 0.0, dtype=torch.float32)
        batch["index"] = torch.tensor(list(positions), dtype=torch.int64)
        return batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Window, Iterator[dict[str, Any]]]]:
        """Yield (window, its micro-batches) for `epoch` from window `start` on, until the stream ends.

        Windows are read READ_AHEAD samples at a time and this process's samples of all of them prepared
        in one call (a tokenizer's cost per call is paid once per read, not per micro-batch); which samples
        form which micro-batch is unchanged.
        """
        size = self.plan.effective_batch
        ahead = max(1, READ_AHEAD // size)
        samples = self.ordered(epoch)
        self.epoch_ended = False
        for _ in itertools.islice(samples, start * size):  # a resume: read past the windows already trained
            pass
        k = start
        while True:
            began = time.perf_counter()
            windows = []  # (first stream position, window size, this process's slots, their raw samples)
            for _ in range(ahead):
                raw = list(itertools.islice(samples, size))
                if not raw:
                    break
                slots = self.plan.slots(len(raw))
                first = (k + len(windows)) * size
                windows.append((first, len(raw), slots, [[(raw[i], first + i) for i in (positions or [0])]
                                                         for positions in slots]))
                if len(raw) < size:
                    break
            prepared = iter(self._prepared([item for *_, chosen in windows for part in chosen for item in part],
                                           epoch)) if windows else iter(())
            self.wait_seconds += time.perf_counter() - began
            for first, count, slots, chosen in windows:
                keys = [[(position, 1.0) for _, position in part] if positions else [(first, 0.0)]
                        for positions, part in zip(slots, chosen)]
                parts = [[next(prepared) for _ in part] for part in chosen]
                yield Window(keys, count), self._timed(parts, keys)
                k += 1
            if not windows or windows[-1][1] < size:
                self.epoch_ended = True
                return

    def _timed(self, parts: list[list[Any]], keys: list[list[tuple[int, float]]]) -> Iterator[dict[str, Any]]:
        for samples, micro_keys in zip(parts, keys):
            began = time.perf_counter()
            batch = self._collated(samples, real=micro_keys[0][1] > 0, positions=[p for p, _ in micro_keys])
            self.wait_seconds += time.perf_counter() - began
            yield batch

    def first_micro_batch(self, limit: int = 8) -> dict[str, Any]:
        """Up to `limit` samples from the start of the first epoch, collated (for counting a step's FLOPs)."""
        raw = list(itertools.islice(self.ordered(0), min(limit, self.plan.micro_batch)))
        if not raw:
            raise UserError("the training stream is empty")
        return self._collated(self._prepared([(sample, i) for i, sample in enumerate(raw)], 0), real=True,
                             positions=range(len(raw)))

    def use_micro_batch(self, micro_batch: int) -> None:
        """Re-cut every window into micro-batches of `micro_batch`."""
        self.plan = self.plan.with_micro_batch(micro_batch)


class StreamingEval:
    """An evaluation stream: this process's share (sample i goes to process i mod P), prepared and collated
    in batches of `batch_size`, each batch with the stream positions of its samples (`index`)."""

    def __init__(self, stream: Any, prepare: Prepare, collate_fn: Callable, batch_size: int, num_processes: int,
                 process_index: int):
        self.stream, self.prepare, self.collate_fn = stream, prepare, collate_fn
        self.batch_size, self.num_processes, self.process_index = batch_size, num_processes, process_index

    def __iter__(self) -> Iterator[dict[str, Any]]:
        mine = itertools.islice(enumerate(self.stream), self.process_index, None, self.num_processes)
        while True:
            chunk = list(itertools.islice(mine, self.batch_size))
            if not chunk:
                return
            batch = self.collate_fn(self.prepare([sample for _, sample in chunk]))
            batch["index"] = torch.tensor([i for i, _ in chunk], dtype=torch.long)
            yield batch


def gather_in_stream_order(accelerator: Any, parts: list[np.ndarray], index: np.ndarray) -> list[np.ndarray]:
    """Each process's arrays (one row per sample it predicted, `index` its stream positions) from every process,
    in stream order: each sample exactly once."""
    if accelerator.num_processes == 1:
        order = np.argsort(index, kind="stable")
        return [part[order] for part in parts]
    from accelerate.utils import gather_object

    gathered = gather_object([(index, parts)])
    index = np.concatenate([i for i, _ in gathered])
    order = np.argsort(index, kind="stable")
    return [np.concatenate([p[k] for _, p in gathered])[order] for k in range(len(parts))]


def is_stream(dataset: Any) -> bool:
    """Whether `dataset` is a `datasets.IterableDataset` (read as a stream, its length unknown)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def build_stream_train_data(stream: Any, config: TrainingConfig, accelerator: Any, prepare: Prepare,
                            collate_fn: Callable, augment: Optional[Augment] = None) -> StreamingTrainData:
    """Streamed training data for this process (framework.data.loaders.build_train_data for a stream)."""
    if config.auto_find_batch_size:
        raise FlagError("auto_find_batch_size", "does not work on a streamed training set (the search probes with "
                        "the longest sample, which a stream does not know before a full pass)")
    total = config.total_train_batch_size
    if total and total < accelerator.num_processes:
        raise FlagError("total_train_batch_size", f"{total} is smaller than the {accelerator.num_processes} processes")
    micro = config.per_device_train_batch_size
    plan = StreamPlan(micro, accelerator.num_processes, accelerator.process_index, config.seed,
                      total or micro * config.gradient_accumulation_steps * accelerator.num_processes)
    return StreamingTrainData(stream, plan, prepare, collate_fn, augment)


def build_stream_eval(stream: Any, config: TrainingConfig, accelerator: Any, prepare: Prepare,
                      collate_fn: Callable) -> StreamingEval:
    """This process's share of a streamed evaluation split (framework.data.loaders.build_eval_loader for a stream)."""
    return StreamingEval(stream, prepare, collate_fn, config.per_device_eval_batch_size, accelerator.num_processes,
                         accelerator.process_index)
