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
    """Whether micro-batches of `dataset` are read as Arrow tables: a `datasets.Dataset` (unformatted or
    torch-formatted, without format options such as a dtype, which the table would not carry), a collate function
    with a `collate_table` method, and no per-sample augmentation (which works on rows)."""
    import datasets

    return (augment is None and callable(getattr(collate_fn, "collate_table", None))
            and isinstance(dataset, datasets.Dataset) and dataset.format.get("type") in (None, "torch")
            and not dataset.format.get("format_kwargs"))


def arrow_view(dataset: Any) -> Any:
    """`dataset` read as Arrow tables: the same rows (a selection's included) and the same columns as its format
    shows."""
    shown = dataset.format
    return dataset.with_format("arrow", columns=shown["columns"], output_all_columns=shown["output_all_columns"])


def _lengths(lists: pa.ChunkedArray | pa.Array) -> np.ndarray:
    lengths = pc.list_value_length(lists)
    if lengths.null_count:  # a missing list counts as empty
        lengths = lengths.fill_null(0)
    return lengths.to_numpy().astype(np.int64, copy=False)


def pad_list_column(column: pa.ChunkedArray | pa.Array, fill: int, dtype: Any = np.int64
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A column of lists as an array of shape (rows, longest list), each row's values first and `fill` after
    them, and the rows' lengths. A missing list counts as empty."""
    lengths = _lengths(column)
    longest = int(lengths.max()) if len(lengths) else 0
    padded = np.full((len(lengths), longest), fill, dtype=dtype)
    # list_flatten gives the values of the column's rows only (a slice of a larger array included), row after row,
    # which is the order of the mask's True cells read row by row. A table read from a datasets.Dataset is one
    # chunk per row: both calls take the chunks as they are (joining them first would copy every value).
    padded[np.arange(longest)[None, :] < lengths[:, None]] = pc.list_flatten(column).to_numpy()
    return padded, lengths


def column_tensor(column: pa.ChunkedArray | pa.Array) -> torch.Tensor:
    """A column of numbers, or of lists of one length (multi-label indicator rows), as the tensor datasets' torch
    format gives for those rows stacked: integers as int64, floating point as float32, booleans as bool."""
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        array = pc.list_flatten(column).to_numpy().reshape(len(column), -1)
    else:
        array = column.to_numpy()
    if np.issubdtype(array.dtype, np.bool_):
        return torch.from_numpy(array.copy())
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))
