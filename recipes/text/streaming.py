"""The text recipe's streamed data (`--streaming true`): splits opened as streams, their classes without a
pass, the first texts to fit the tokenizer and IDF on, and the preparation of raw rows as they are read.

A stream is never read through before training: the classes come from a class-label feature of the
data or from `--label_names`, and the tokenizer (and the n-gram model's IDF) from the first
`--streaming_fit_rows` training texts, the same rows on every process. A row that breaks the rules
(no text, a label that is no class) is found when it is read, and stops the run with one line.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import torch
from datasets import ClassLabel

from framework import FlagError, UserError, label_name, load_hub_splits, load_local_stream, sorted_class_names


def open_streams(config: Any) -> tuple[Optional[Any], Optional[Any]]:
    """The training and evaluation splits the run needs, as streams (None for one it does not need)."""
    if config.dataset_name:
        return load_hub_splits(config.dataset_name, config.dataset_config, train=config.do_train,
                               evaluate=config.do_eval, streaming=True)
    as_written = (config.text_column, config.label_column)
    train = load_local_stream(config.train_file, "--train_file", as_written) if config.do_train else None
    evaluation = load_local_stream(config.validation_file, "--validation_file", as_written) if config.do_eval \
        else None
    return train, evaluation


def stream_class_names(stream: Any, config: Any) -> list[str]:
    """The classes of a stream: its class-label feature's names, else --label_names (sorted as class names are:
    numerically when all are numbers). Neither is refused: a stream's labels are not known before a pass."""
    features = getattr(stream, "features", None) or {}
    feature = features.get(config.label_column)
    given = [name.strip() for name in config.label_names.split(",") if name.strip()]
    if isinstance(feature, ClassLabel):
        if given and sorted_class_names(set(given)) != sorted_class_names(set(feature.names)):
            raise FlagError("label_names", f"{config.label_names!r} differs from the class names the data brings "
                            f"({', '.join(feature.names)}); leave --label_names out")
        return list(feature.names)
    if len(set(given)) < 2:
        raise FlagError("label_names", "must list the classes (at least two, comma-separated) with --streaming: a "
                        "stream's labels are not known before a pass over it")
    return sorted_class_names(set(given))


def first_texts(stream: Any, column: str, rows: int) -> list[str]:
    """The texts of the first `rows` rows of `stream` in stored order (the tokenizer and IDF are fit on them)."""
    texts = [row.get(column) for row in itertools.islice(iter(stream), rows)]
    if not texts:
        raise UserError("the training stream is empty")
    if not all(isinstance(text, str) for text in texts):
        raise UserError(f"the training data's text column {column!r} holds a value that is not a string "
                        f"(set --text_column to the column of texts)")
    return texts


def with_class_ids(stream: Any, label_column: str, names: list[str], what: str) -> Any:
    """`stream` with its labels turned into indices into `names` as rows are read, matched by class name (a
    class-label feature's ids by their names); a label that names no class stops the run with one line."""
    feature = (getattr(stream, "features", None) or {}).get(label_column)
    index = {name: i for i, name in enumerate(names)}

    def class_id(row: dict) -> dict:
        value = row.get(label_column)
        if value is None:
            raise UserError(f"{what} has a row without a label in {label_column!r}")
        name = feature.int2str(int(value)) if isinstance(feature, ClassLabel) else label_name(value)
        if name not in index:
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise UserError(f"{what} has label {name!r}, not one of the model's classes ({shown})")
        return {label_column: index[name]}

    return stream.map(class_id)


def stream_preparer(tokenize: Callable[[dict], Any], text_column: str, label_column: str,
                    what: str) -> Callable[[list[dict]], list[dict]]:
    """raw rows (labels already class ids: with_class_ids) -> model samples, as a prepared split's torch format
    gives them: each row's text checked, then `tokenize` on the batch. `what` names the data in messages."""

    def prepare(rows: list[dict]) -> list[dict]:
        for row in rows:
            text = row.get(text_column)
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{what} has a row without text in {text_column!r} (found {text!r})")
        encoded = tokenize({text_column: [row[text_column] for row in rows],
                            label_column: [row[label_column] for row in rows]})
        if hasattr(encoded, "to_pylist"):  # an Arrow table (the n-gram features)
            samples = encoded.to_pylist()
        else:
            samples = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
        return [{key: torch.as_tensor(value) for key, value in sample.items()} for sample in samples]
    return prepare
