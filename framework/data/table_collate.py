"""Micro-batches read as one Arrow table: the fetch a collate function's `collate_table` asks for.

A recipe's collate function gets a list of rows. For a `datasets.Dataset`, building those rows is most of the
cost of a small model's step: the Arrow batch is split into one dict per row, every list becomes its own tensor,
and the collate function loops over them again to pad. A collate function that also has a method
`collate_table(table: pyarrow.Table) -> dict` is given, instead, each micro-batch as one table read in one call
(training, evaluation and prediction), and must return exactly what calling it on the same rows returns (the
same tensors, dtypes included): training stays bitwise the same. Rows are still what it gets where a table is
not available (augmented samples, streamed samples, the batch-size search's probes).

`pad_list_column` and `column_tensor` are the NumPy building blocks for such a method.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch


def fetches_table(dataset: Any, collate_fn: Optional[Callable], augment: Optional[Callable] = None) -> bool:
    """Whether micro-batches of `dataset` are read as Arrow tables: a `datasets.Dataset`, a collate function with
    a `collate_table` method, and no per-sample augmentation (which works on rows)."""
    import datasets

    return (augment is None and callable(getattr(collate_fn, "collate_table", None))
            and isinstance(dataset, datasets.Dataset))


def arrow_view(dataset: Any) -> Any:
    """`dataset` read as Arrow tables: the same rows (a selection's included) and the same columns as its format
    shows."""
    shown = dataset.format
    return dataset.with_format("arrow", columns=shown["columns"], output_all_columns=shown["output_all_columns"])


def _flat(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def pad_list_column(column: pa.ChunkedArray | pa.Array, fill: int, dtype: Any = np.int64
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A column of lists as an array of shape (rows, longest list), each row's values first and `fill` after
    them, and the rows' lengths. A missing list counts as empty."""
    lists = _flat(column)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    longest = int(lengths.max()) if len(lengths) else 0
    padded = np.full((len(lengths), longest), fill, dtype=dtype)
    # flatten() gives the values of the table's rows only (a slice of a larger array included), row after row,
    # which is the order of the mask's True cells read row by row
    padded[np.arange(longest)[None, :] < lengths[:, None]] = lists.flatten().to_numpy(zero_copy_only=False)
    return padded, lengths


def column_tensor(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """A column of numbers, or of lists of one length (multi-label indicator rows), as the tensor datasets' torch
    format gives for those rows stacked: integers as int64, floating point as float32, booleans as bool."""
    values = _flat(column)
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(
            values.type):
        array = values.flatten().to_numpy(zero_copy_only=False).reshape(len(values), -1)
    else:
        array = values.to_numpy(zero_copy_only=False)
    if np.issubdtype(array.dtype, np.bool_):
        return torch.from_numpy(array.copy())
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))
