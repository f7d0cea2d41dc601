"""Multi-label data (--problem_type multi_label_classification): each sample carries a *set* of labels.

A label column holds lists (JSON lists, Parquet/Arrow list columns) or strings
split at --label_delimiter ("news,sports"); every item is a label name as
framework.data.labels names classes (3 and 3.0 name "3"), except the ids of a
Hub dataset's list of ClassLabel, which name its labels. The labels of a run are
the ClassLabel's names in its order, else the sorted names seen in the training split; every split becomes an indicator
matrix over them (samples x labels, int8: 1 where the sample has the label),
stored as a fixed-length list column, so a batch's `labels` is a samples x labels
tensor. A test split without labels gets rows of -1 (unknown).

Refused with one line naming the row: a number or an object where a label set
belongs, an empty set, a validation or test label the model does not know.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, concatenate_datasets

from framework.core.errors import UserError
from framework.data.columns import require_column
from framework.data.labels import check_distinct_names, label_name, sorted_class_names

UNKNOWN = -1  # an indicator row of a test input without labels


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def label_sets(split: Dataset, column: str, delimiter: str, what: str) -> list[list[str]]:
    """Each row's label names (in the order given, each once). Refuses a row whose value is not a list or a
    delimited string, a list holding lists or objects, and an empty set."""
    import pyarrow as pa

    values = split.with_format("arrow")[column]
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        sets = [[part.strip() for part in (text or "").split(delimiter) if part.strip()]
                for text in values.to_pylist()]
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        item = kind.value_type
        if pa.types.is_nested(item):
            raise UserError(f"{what} row 1 has label {_describe(values[0].as_py())}, a list of "
                            f"{'lists' if pa.types.is_list(item) else 'objects'}; a multi-label label is a list "
                            f"of label names")
        inner = class_label_items(split, column)
        if inner is not None:  # ids of a ClassLabel (Hub datasets): its names, as for single-label classes
            sets = [[inner.int2str(int(v)) for v in (row or []) if v is not None] for row in values.to_pylist()]
        else:
            sets = [[label_name(v) for v in (row or []) if v is not None] for row in values.to_pylist()]
    else:
        shown = _describe(values[0].as_py()) if len(values) else "nothing"
        raise UserError(f"{what} has label {shown} in row 1 ({kind}), not a list: with --problem_type "
                        f"multi_label_classification a label is a list of names (a JSON list, or a string split "
                        f"at --label_delimiter {delimiter!r})")
    sets = [list(dict.fromkeys(row)) for row in sets]
    joined = next((n for row in sets for n in row if delimiter in n), None)
    if joined is not None:  # predictions.csv joins a sample's labels with the delimiter: it could not be split back
        raise UserError(f"{what} has the label {joined!r}, which contains --label_delimiter "
                        f"{delimiter!r}; rename the label or choose another --label_delimiter")
    empty = next((i for i, row in enumerate(sets) if not row), None)
    if empty is not None:
        raise UserError(f"{what} row {empty + 1} has an empty label set; every sample needs at least one label "
                        f"(give such samples a label of their own, e.g. 'none', or drop them)")
    return sets


def class_label_items(split: Dataset, column: str) -> ClassLabel | None:
    """The ClassLabel of a list column's items (a Hub dataset's `List(ClassLabel(...))`), or None."""
    inner = getattr(split.features[column], "feature", None)
    return inner if isinstance(inner, ClassLabel) else None


def indicator_matrix(sets: list[list[str]], names: list[str], what: str) -> np.ndarray:
    """samples x labels, int8, 1 where the sample has the label; a name outside `names` is refused."""
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), np.int8)
    for row, labels in enumerate(sets):
        for name in labels:
            column = index.get(name)
            if column is None:
                shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
                raise UserError(f"{what} row {row + 1} has label {name!r}, not one of the model's labels ({shown})")
            matrix[row, column] = 1
    return matrix


def with_indicators(split: Dataset, column: str, matrix: np.ndarray) -> Dataset:
    """`split` with `column` replaced by the rows of `matrix` (a fixed-length int8 list per sample)."""
    import pyarrow as pa

    width = matrix.shape[1]
    array = pa.FixedSizeListArray.from_arrays(pa.array(matrix.astype(np.int8).ravel()), width)
    from datasets.table import InMemoryTable

    indicators = Dataset(InMemoryTable(pa.table({column: array})))
    return concatenate_datasets([split.remove_columns(column), indicators], axis=1)


def multi_label_names_from(train: Dataset, column: str, delimiter: str, *,
                           what: str = "the training data") -> tuple[list[str], Dataset]:
    """The labels of a training split (sorted names, as classes are sorted) and the split with indicator rows.
    Refuses a split with fewer than two distinct labels."""
    require_column(train.column_names, column, what)
    sets = label_sets(train, column, delimiter, what)
    declared = class_label_items(train, column)
    # A ClassLabel brings its names and their order (the model's outputs follow them, seen or not); else the
    # sorted names seen.
    names = list(declared.names) if declared is not None else sorted_class_names({n for row in sets for n in row})
    if declared is None:
        check_distinct_names(names, what)
    if len(names) < 2:
        raise UserError(f"{what} has only the label {names[0]!r}; a multi-label classifier needs at least two "
                        f"labels in its training data")
    return names, with_indicators(train, column, indicator_matrix(sets, names, what))


def to_indicators(split: Dataset, column: str, names: list[str], delimiter: str, what: str, *,
                  required: bool = True) -> Dataset:
    """`split` with its label sets as indicator rows over the model's `names`; without the label column (where
    `required` is False: test inputs) every row is UNKNOWN."""
    if column not in split.column_names:
        if required:
            require_column(split.column_names, column, what)
        return with_indicators(split.add_column(column, [0] * len(split)), column,
                               np.full((len(split), len(names)), UNKNOWN, np.int8))
    return with_indicators(split, column, indicator_matrix(label_sets(split, column, delimiter, what), names, what))
