"""Labels as users mean them: class names from label values, and label ids by class name.

A label value is a class *name* whatever its type: a CSV column of 1, 2, 3 holds
three classes named "1", "2" and "3" (not four classes 0..3 of which 0 is never
seen), and 1.0 names the same class as 1. Classes are ordered by sorting their
names, numerically when every name is a number. Only a `ClassLabel` feature (Hub
datasets, image folders) carries indices, since it brings its names with it.
A fractional number is refused: it is a regression target, not a class.

Every split of a run (training, evaluation, test) maps its labels to the model's
classes by name, so an evaluation file that lacks a class, or lists its values in
another order, is still scored against the right class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset

from framework.core.errors import UserError


def label_name(value: Any) -> str:
    """The class name of one label value: 3 and 3.0 -> "3", "cat" -> "cat", True -> "True"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (np.floating,)) and float(value).is_integer():
        return str(int(value))
    return str(value.item() if isinstance(value, np.generic) else value)


def _is_number(name: str) -> bool:
    try:
        return math.isfinite(float(name))
    except ValueError:
        return False


def sorted_class_names(names: set[str]) -> list[str]:
    """Class names in sorted order, numerically when every one is a number ("2" before "10")."""
    if names and all(_is_number(n) for n in names):
        return sorted(names, key=lambda n: (float(n), n))
    return sorted(names)


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{value!r} (a list)"
    if isinstance(value, dict):
        return f"{value!r} (an object)"
    return repr(value)


def _label_values(split: Dataset, column: str, what: str) -> list[str]:
    """Every label of `split` as its class name; refuses lists, objects and fractional numbers, naming the row.

    `what` names the split as the messages start it: "the training data", "--validation_file 'v.csv'".
    """
    feature = split.features[column]
    if isinstance(feature, ClassLabel):
        return [feature.int2str(int(v)) if v is not None and v >= 0 else "" for v in split[column]]
    kind = getattr(feature, "dtype", None)
    values = split[column]
    if kind is None or kind in ("list", "dict", "struct"):
        row = next((i for i, v in enumerate(values) if v is not None), 0)
        raise UserError(f"{what} row {row + 1} has label {_describe(values[row])}; a label must be one "
                        f"value (a class name or number)")
    if kind.startswith("float"):
        array = np.asarray(values, dtype=np.float64)
        fractional = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if len(fractional):
            row = int(fractional[0])
            raise UserError(f"{what} row {row + 1} has label {values[row]!r}, not a whole number: labels "
                            f"are class names, and fractional values are a regression target, not classes")
        return [str(int(v)) for v in array]
    return [label_name(v) for v in values]


def _as_ids(split: Dataset, column: str, ids: np.ndarray, names: list[str]) -> Dataset:
    """`split` with `column` replaced by `ids` (int64), typed as a ClassLabel over `names` when all are known."""
    temporary = f"__{column}_ids"
    split = split.add_column(temporary, ids.astype(np.int64)).remove_columns(column).rename_column(temporary, column)
    if (ids >= 0).all():
        split = split.cast_column(column, ClassLabel(names=list(names)))
    return split


def class_names_from(train: Dataset, column: str, *, what: str = "the training data",
                     hint: str = "set --label_column") -> tuple[list[str], Dataset]:
    """The classes of a training split and the split with label ids: a ClassLabel's own names (and ids),
    else the sorted distinct label values as names. Refuses a split with fewer than two classes."""
    if column not in train.column_names:
        raise UserError(f"{what} has no label column {column!r} "
                        f"(columns: {', '.join(train.column_names)}; {hint})")
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        present = sorted({int(v) for v in train[column]})
        if present and (present[0] < 0 or present[-1] >= len(names)):
            bad = present[0] if present[0] < 0 else present[-1]
            raise UserError(f"{what} has label id {bad}, outside its {len(names)} class names")
        seen = [names[i] for i in present]
    else:
        values = _label_values(train, column, what)
        names = sorted_class_names(set(values))
        index = {name: i for i, name in enumerate(names)}
        train = _as_ids(train, column, np.array([index[v] for v in values]), names)
        seen = names
    if len(seen) < 2:
        found = f"only the class {seen[0]!r}" if seen else "no labels"
        raise UserError(f"{what} has {found}; a classifier needs at least two classes in its training data")
    return names, train


def to_class_ids(split: Dataset, column: str, names: list[str], what: str, *, required: bool = True,
                 hint: str = "set --label_column") -> Dataset:
    """`split` with its labels as indices into the model's `names`, matched by class name.

    Without the label column (allowed where `required` is False: test inputs) every label is -1.
    A label that names no class of the model is refused.
    """
    if column not in split.column_names:
        if required:
            raise UserError(f"{what} has no label column {column!r} "
                            f"(columns: {', '.join(split.column_names)}; {hint})")
        return split.add_column(column, [-1] * len(split))
    feature = split.features[column]
    if isinstance(feature, ClassLabel) and list(feature.names) == list(names):
        return split
    values = _label_values(split, column, what)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted_class_names(set(values) - set(index))
    if unknown:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise UserError(f"{what} has label {unknown[0]!r}, not one of the model's classes ({shown})")
    return _as_ids(split, column, np.array([index[v] for v in values]), names)
