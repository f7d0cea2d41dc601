"""Labels as users mean them: class names from label values, and label ids by class name.

A label value is a class *name* whatever its type: a CSV column of 1, 2, 3 holds
three classes named "1", "2" and "3" (not four classes 0..3 of which 0 is never
seen). A CSV label is the text in the file (framework.data.local_files reads it
so): `01` and `1` are two classes, and `NA` or `None` are names. In a typed
column (JSON, Parquet) 1.0 names the same class as 1. Names that differ only by
surrounding spaces or case are refused, never split into two classes. Classes are ordered by sorting their
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
from framework.data.columns import require_column


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


def _label_codes(split: Dataset, column: str, what: str) -> tuple[list[str], np.ndarray]:
    """The distinct class names among `split`'s labels and each row's index into them (worked out in Arrow:
    a million labels take a fraction of a second). Refuses lists, objects and fractional numbers, naming the row.

    `what` names the split as the messages start it: "the training data", "--validation_file 'v.csv'".
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    feature = split.features[column]
    values = split.with_format("arrow")[column]
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if isinstance(feature, ClassLabel):  # ids; -1 (unlabelled) has the name ""
        ids = values.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        present, codes = np.unique(ids, return_inverse=True)
        return [feature.int2str(int(i)) if i >= 0 else "" for i in present], codes.astype(np.int64)
    kind = getattr(feature, "dtype", None)
    if kind is None or kind in ("list", "dict", "struct"):
        row = next((i for i, v in enumerate(values.to_pylist()) if v is not None), 0)
        raise UserError(f"{what} row {row + 1} has label {_describe(values[row].as_py())}; a label must be one "
                        f"value (a class name or number)")
    if kind.startswith("float"):
        array = values.to_numpy(zero_copy_only=False).astype(np.float64)
        fractional = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if len(fractional):
            row = int(fractional[0])
            raise UserError(f"{what} row {row + 1} has label {values[row].as_py()!r}, not a whole number: labels "
                            f"are class names, and fractional values are a regression target, not classes")
        values = pa.array(array.astype(np.int64))
    encoded = pc.dictionary_encode(values, null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = [label_name(v) for v in encoded.dictionary.to_pylist()]
    distinct = list(dict.fromkeys(names))  # two values may name one class (never in one typed column; kept safe)
    position = {name: i for i, name in enumerate(distinct)}
    return distinct, np.array([position[name] for name in names], dtype=np.int64)[codes]


def _as_ids(split: Dataset, column: str, ids: np.ndarray, names: list[str]) -> Dataset:
    """`split` with `column` replaced by `ids` (int64), typed as a ClassLabel over `names` when all are known."""
    temporary = f"__{column}_ids"
    split = split.add_column(temporary, ids.astype(np.int64)).remove_columns(column).rename_column(temporary, column)
    if (ids >= 0).all():
        split = split.cast_column(column, ClassLabel(names=list(names)))
    return split


def check_distinct_names(names: list[str], what: str) -> None:
    """Refuse class names that differ only by surrounding whitespace or letter case ("sports" and "sports ",
    "Food" and "food"): almost always one class written two ways, which would silently train as two."""
    seen: dict[str, str] = {}
    for name in sorted(names):
        key = name.strip().casefold()
        if key in seen and seen[key] != name:
            raise UserError(f"{what} has the labels {seen[key]!r} and {name!r}, which differ only by surrounding "
                            f"spaces or letter case; write each class one way in the file")
        seen.setdefault(key, name)


def class_names_from(train: Dataset, column: str, *, what: str = "the training data",
                     hint: str = "set --label_column") -> tuple[list[str], Dataset]:
    """The classes of a training split and the split with label ids: a ClassLabel's own names (and ids),
    else the sorted distinct label values as names. Refuses a split with fewer than two classes."""
    require_column(train.column_names, column, what, hint=hint)
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        import pyarrow.compute as pc

        present = sorted(v for v in pc.unique(train.with_format("arrow")[column]).to_pylist() if v is not None)
        if present and (present[0] < 0 or present[-1] >= len(names)):
            bad = present[0] if present[0] < 0 else present[-1]
            raise UserError(f"{what} has label id {bad}, outside its {len(names)} class names")
        seen = [names[i] for i in present]
    else:
        distinct, codes = _label_codes(train, column, what)
        check_distinct_names(distinct, what)
        names = sorted_class_names(set(distinct))
        index = {name: i for i, name in enumerate(names)}
        train = _as_ids(train, column, np.array([index[v] for v in distinct], dtype=np.int64)[codes], names)
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
            require_column(split.column_names, column, what, hint=hint)
        return split.add_column(column, [-1] * len(split))
    feature = split.features[column]
    if isinstance(feature, ClassLabel) and list(feature.names) == list(names):
        return split
    distinct, codes = _label_codes(split, column, what)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted_class_names(set(distinct) - set(index))
    if unknown:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise UserError(f"{what} has label {unknown[0]!r}, not one of the model's classes ({shown})")
    return _as_ids(split, column, np.array([index[v] for v in distinct], dtype=np.int64)[codes], names)


def stratified_hold_out(split: Dataset, column: str, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split `split` into (training, evaluation) with `fraction` of each class's rows held out (at least one of a
    class with two or more rows; a class with one row stays in training), so every evaluation label is one of the
    model's classes. Where that holds out less than half of `fraction` (label sets, each seen once), the rows are
    held out at random instead. Both parts keep the file's row order; the same `seed` gives the same split."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = split.with_format("arrow")[column]
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_nested(values.type):  # label sets: one group per distinct set
        values = pa.array([repr(v) for v in values.to_pylist()])
    codes = pc.dictionary_encode(values, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    _, starts, counts = np.unique(codes[order], return_index=True, return_counts=True)
    held = [order[start + rng.permutation(count)[:max(1, int(round(fraction * count)))]]
            for start, count in zip(starts, counts) if count >= 2]
    chosen = np.concatenate(held) if held else np.zeros(0, np.int64)
    if len(chosen) < fraction * len(split) / 2:
        chosen = rng.permutation(len(split))[:max(1, int(round(fraction * len(split))))]
    mask = np.zeros(len(split), bool)
    mask[chosen] = True
    return split.select(np.flatnonzero(~mask)), split.select(np.flatnonzero(mask))


def training_labels(dataset: Any) -> np.ndarray:
    """The `labels` of every training sample (for --class_weights balanced), without decoding inputs."""
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return np.asarray(dataset.with_format("numpy")["labels"])  # a plain copy: no set_transform
    return np.asarray([int(dataset[i]["labels"]) for i in range(len(dataset))])
