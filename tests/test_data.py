"""The window plan: one data order per seed and effective batch, every sample once, filler weighted 0."""

from __future__ import annotations

import math

import pytest
import torch

from framework.core.errors import UserError
from framework.data.loaders import WindowPlan, check_labels

from helpers import reset_accelerate


def window_sets(num_samples, micro, accum, procs, seed=1, epoch=0):
    """For each optimizer step: the multiset of (index, weight) over all processes."""
    plans = [WindowPlan(num_samples, micro, accum, procs, p, seed) for p in range(procs)]
    per_process = [list(plan.windows(epoch)) for plan in plans]
    steps = []
    for k in range(plans[0].windows_per_epoch):
        windows = [w[k] for w in per_process]
        assert len({w.num_real for w in windows}) == 1  # every process agrees on the divisor
        assert len({len(w.micro_batches) for w in windows}) == 1  # same number of backward passes
        keys = [key for w in windows for mb in w.micro_batches for key in mb]
        real = sorted(i for i, weight in keys if weight == 1.0)
        assert len(real) == windows[0].num_real
        steps.append(real)
    return steps


@pytest.mark.parametrize("num_samples", [1437, 64, 31, 3])
def test_same_samples_per_step_for_every_split_of_the_effective_batch(num_samples):
    reference = window_sets(num_samples, 32, 1, 1)
    for micro, accum, procs in [(8, 4, 1), (8, 2, 2), (16, 1, 2), (4, 2, 4), (1, 32, 1)]:
        assert window_sets(num_samples, micro, accum, procs) == reference, (micro, accum, procs)


def test_every_sample_exactly_once_per_epoch():
    steps = window_sets(1437, 5, 3, 2)
    flat = [i for step in steps for i in step]
    assert sorted(flat) == list(range(1437))


def test_steps_per_epoch_is_ceil_of_batches_over_accumulation():
    plan = WindowPlan(1437, 8, 4)
    batches = math.ceil(1437 / 8)
    assert plan.windows_per_epoch == math.ceil(batches / 4) == 45
    last = list(plan.windows(0))[-1]
    assert last.num_real == 1437 - 44 * 32 == 29
    assert [len(mb) for mb in last.micro_batches] == [8, 8, 8, 5]


def test_filler_only_when_a_process_has_no_real_sample():
    # 3 samples, 4 processes: the last process gets one weight-0 filler sample.
    plans = [WindowPlan(3, 1, 1, 4, p, seed=0) for p in range(4)]
    weights = [[w for mb in next(plan.windows(0)).micro_batches for _, w in mb] for plan in plans]
    assert weights == [[1.0], [1.0], [1.0], [0.0]]


def test_order_depends_on_seed_and_epoch():
    plan = WindowPlan(100, 10, 1, seed=1)
    assert list(plan.order(0)) != list(plan.order(1))
    assert list(plan.order(0)) == list(WindowPlan(100, 5, 2, seed=1).order(0))
    assert list(plan.order(0)) != list(WindowPlan(100, 10, 1, seed=2).order(0))


def test_resume_start_skips_whole_windows():
    plan = WindowPlan(200, 8, 2, seed=3)
    full = list(plan.windows(1))
    assert list(plan.windows(1, start=5)) == full[5:]


def test_empty_training_set_is_refused():
    with pytest.raises(UserError, match="the training set is empty"):
        WindowPlan(0, 8, 1)


def test_check_labels():
    from datasets import Dataset

    good = Dataset.from_dict({"x": [1, 2, 3], "labels": [0, 1, 2]})
    check_labels(good, 3)
    with pytest.raises(UserError, match=r"label 3, outside the allowed 0..2"):
        check_labels(Dataset.from_dict({"labels": [0, 3]}), 3)
    with pytest.raises(UserError, match="no label column 'labels'"):
        check_labels(Dataset.from_dict({"y": [0]}), 3)
    with pytest.raises(UserError, match="is empty"):
        check_labels(Dataset.from_dict({"labels": []}), 3)
    with pytest.raises(UserError, match="has no label in row 1; every row needs one"):
        check_labels(Dataset.from_dict({"labels": [0, None, 1]}), 3)
    with pytest.raises(UserError, match="has label 'cat'; labels must be integers 0..2"):
        check_labels(Dataset.from_dict({"labels": ["cat", "dog"]}), 3)
    # a split (an indices mapping over the table) is checked by its own rows, read as one column
    split = Dataset.from_dict({"labels": [0, 7, 1, 2]}).select([0, 2, 3])
    check_labels(split, 3)
    with pytest.raises(UserError, match="label 7"):
        check_labels(Dataset.from_dict({"labels": [0, 7, 1, 2]}).select([3, 1]), 3)


def test_a_torch_formatted_dataset_is_fetched_as_columns_and_gives_the_row_path_batches():
    """Batched fetch: one indexed read per micro-batch, the same tensors as rows collated one by one."""
    from datasets import Dataset
    from torch.utils.data import default_collate

    from framework.data.loaders import TrainData, WindowPlan, fetches_columns

    rows = Dataset.from_dict({"x": [[float(i), float(-i)] for i in range(50)], "labels": [i % 3 for i in range(50)]})
    dataset = rows.with_format("torch")
    assert fetches_columns(dataset, None) and not fetches_columns(dataset, default_collate)
    assert not fetches_columns(rows, None)  # not torch-formatted: rows, as before
    plan = WindowPlan(50, micro_batch=8, accumulation=2, seed=3)
    columns, by_rows = TrainData(dataset, plan), TrainData(dataset, plan, collate_fn=default_collate)
    assert columns.loader.dataset.batched and not by_rows.loader.dataset.batched
    assert columns.loader.dataset.columns is not None  # small: held as tensors, a micro-batch is one index
    from framework.data.loaders import in_memory_columns

    assert in_memory_columns(dataset, limit=10) is None  # past the limit: one Arrow read per micro-batch
    for (_, a), (_, b) in zip(columns.epoch(0), by_rows.epoch(0)):
        for one, other in zip(a, b):
            assert one.keys() == other.keys()
            assert all(torch.equal(one[k], other[k]) and one[k].dtype == other[k].dtype for k in one)


@pytest.mark.parametrize("procs,micro,accum,effective,start,fillers", [
    (1, 8, 2, 0, 0, False), (2, 4, 2, 0, 1, False), (3, 4, 1, 0, 0, False), (2, 3, 2, 13, 0, True),
    (4, 2, 1, 0, 2, False)])
def test_an_epoch_sliced_from_gathered_chunks_gives_each_micro_batchs_fetch(monkeypatch, procs, micro, accum,
                                                                             effective, start, fillers):
    """A set held as tensors: the micro-batches sliced from chunks gathered in training order (a chunk of 5 rows
    here, so micro-batches cross chunk ends) are, key for key and bit for bit, what fetching each micro-batch's keys
    gives, on every process, for filler micro-batches (weight 0), a resumed epoch and an effective batch that is no
    multiple of the micro-batch; with the keys of keyed dropout asked for, each sample's own."""
    from datasets import Dataset

    from framework.data.loaders import TrainData, _ChunkedRows
    from framework.data.sample_keys import sample_keys

    rows = Dataset.from_dict({"x": [[float(i), float(-i)] for i in range(23)], "labels": [i % 3 for i in range(23)]})
    dataset = rows.with_format("torch")
    monkeypatch.setattr(_ChunkedRows, "CHUNK_BYTES", 5 * (2 * 4 + 8))
    seen_fillers = 0
    for process in range(procs):
        plan = WindowPlan(23, micro, accum, procs, process, seed=4, effective_batch=effective)
        data = TrainData(dataset, plan)
        assert data.loader.dataset.columns is not None
        data.dropout_keys_seed = 9  # as the loop asks for a model with KeyedDropout layers
        for epoch in (0, 1):
            windows = list(data.epoch(epoch, start))
            assert [w for w, _ in windows] == list(plan.windows(epoch, start))
            for window, batches in windows:
                for keys, batch in zip(window.micro_batches, batches):
                    fetched = data.collated(keys)  # one micro-batch's keys, fetched alone
                    # the epoch's keys, hashed at once, are each sample's own
                    assert torch.equal(batch.pop("dropout_keys"), sample_keys(fetched["index"], 9, epoch))
                    seen_fillers += keys[0][1] == 0.0
                    assert batch.keys() == fetched.keys()
                    for name in batch:
                        assert batch[name].dtype == fetched[name].dtype and torch.equal(batch[name], fetched[name])
    assert bool(seen_fillers) == fillers


def test_list_columns_read_as_a_table_pad_and_stack_as_the_torch_format_gives():
    """framework.pad_list_column and column_tensor, the blocks of a collate_table: on a selection of the rows, an
    empty list and multi-label indicator rows; the expected values are written out by hand."""
    from datasets import Dataset

    from framework import column_tensor, pad_list_column
    from framework.data.table_collate import arrow_view

    rows = Dataset.from_dict({"ids": [[3, 1], [], [7, 8, 9], [2]], "tags": [[0, 1], [1, 0], [1, 1], [0, 0]],
                              "score": [1.5, 2.0, 0.5, 1.0], "labels": [0, 1, 2, 1]})
    view = rows.select([3, 2, 0, 1])
    table = arrow_view(view)[[0, 1, 2, 3]]
    padded, lengths = pad_list_column(table["ids"], fill=-1)
    assert padded.tolist() == [[2, -1, -1], [7, 8, 9], [3, 1, -1], [-1, -1, -1]] and lengths.tolist() == [1, 3, 2, 0]
    formatted = view.with_format("torch")
    for name in ("tags", "score", "labels"):
        expected = torch.stack([formatted[i][name] for i in range(4)])
        got = column_tensor(table[name])
        assert got.dtype == expected.dtype and torch.equal(got, expected), name
    assert column_tensor(table["tags"]).tolist() == [[0, 0], [1, 1], [0, 1], [1, 0]]
    assert column_tensor(table["score"]).dtype == torch.float32 and column_tensor(table["labels"]).dtype == torch.int64


def test_a_table_is_read_only_for_a_collate_table_on_rows_the_table_shows_as_they_are():
    """Where the split's format would change the rows (numpy arrays, a dtype) or an augmentation works on rows,
    the collate function gets rows, as before."""
    from datasets import Dataset

    from framework.data.table_collate import fetches_table

    class Both:
        def __call__(self, rows):
            return rows

        def collate_table(self, table):
            return table

    rows = Dataset.from_dict({"ids": [[1, 2], [3]], "labels": [0, 1]})
    assert fetches_table(rows, Both()) and fetches_table(rows.with_format("torch"), Both())
    assert not fetches_table(rows, lambda r: r)  # no collate_table
    assert not fetches_table(rows.with_format("numpy"), Both())
    assert not fetches_table(rows.with_format("torch", dtype=torch.float16), Both())
    assert not fetches_table(rows, Both(), augment=lambda sample, generator: sample)
    assert not fetches_table([{"ids": [1], "labels": 0}], Both())


def test_an_evaluation_loader_of_a_small_torch_formatted_set_gives_its_rows_batched(tmp_path):
    """The evaluation view holds a small torch-formatted set as tensors (as training does): each batch equals the
    rows read one by one and collated, on a selection of an image-shaped (Array3D) column, the last batch short."""
    from accelerate import Accelerator
    from datasets import Array3D, Dataset, Features, Value
    from torch.utils.data import default_collate

    from framework.core.config import TrainingConfig
    from framework.data.loaders import build_eval_loader

    features = Features({"pixel_values": Array3D((1, 2, 3), "float32"), "labels": Value("int64")})
    images = torch.arange(40 * 6, dtype=torch.float32).view(40, 1, 2, 3).numpy() / 7
    rows = Dataset.from_dict({"pixel_values": images, "labels": [i % 4 for i in range(40)]}, features=features)
    dataset = rows.select(list(range(39, 2, -3))).with_format("torch")  # 13 rows, reversed, every third
    config = TrainingConfig(output_dir=str(tmp_path), per_device_eval_batch_size=5)
    try:
        loader = build_eval_loader(dataset, config, Accelerator(cpu=True))
        assert loader.dataset.columns is not None
        batches = list(loader)
    finally:
        reset_accelerate()
    assert [len(b["labels"]) for b in batches] == [5, 5, 3]
    for number, batch in enumerate(batches):
        expected = default_collate([dataset[i] for i in range(5 * number, min(13, 5 * number + 5))])
        assert batch.keys() == expected.keys()
        assert all(batch[k].dtype == expected[k].dtype and torch.equal(batch[k], expected[k]) for k in batch)
    assert batches[0]["labels"].tolist() == [39 % 4, 36 % 4, 33 % 4, 30 % 4, 27 % 4]
