"""Labelled text splits as `datasets.Dataset`s: class names, label ids, and the padding collate function."""

from __future__ import annotations

import torch
from datasets import ClassLabel, Dataset, Value

from framework.data import check_labels
from framework.errors import UserError


def class_names_of(train: Dataset, column: str) -> tuple[list[str], Dataset]:
    """Class names from the training data: its ClassLabel feature, string labels (sorted), or 0..max."""
    if column not in train.column_names:
        raise UserError(f"the training data has no label column {column!r} "
                        f"(columns: {', '.join(train.column_names)}; set --label_column)")
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), train
    values = train[column]
    if values and isinstance(values[0], str):
        train = train.class_encode_column(column)  # class names sorted, as ClassLabel
        return list(train.features[column].names), train
    return [str(i) for i in range(max(values) + 1)], train


def to_class_ids(split: Dataset, column: str, names: list[str], what: str, required: bool = True) -> Dataset:
    """The label column as indices into the model's `names` (class names matched by name); without the
    column (allowed for test data) every label is -1."""
    if column not in split.column_names:
        if required:
            raise UserError(f"the {what} has no label column {column!r} "
                            f"(columns: {', '.join(split.column_names)}; set --label_column)")
        return split.add_column(column, [-1] * len(split))
    feature = split.features[column]
    values = list(feature.names) if isinstance(feature, ClassLabel) else split.unique(column)
    if values and isinstance(values[0], str):
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UserError(f"the {what} has label {unknown[0]!r}, not among the model's classes")
        ids = {name: i for i, name in enumerate(names)}
        as_name = feature.int2str if isinstance(feature, ClassLabel) else (lambda v: v)
        features = split.features.copy()
        features[column] = Value("int64")
        split = split.map(lambda batch: {column: [ids[as_name(v)] for v in batch[column]]}, batched=True,
                          features=features)
    check_labels(split, len(names), column=column, name=what)
    return split



def padder(pad_id: int):
    """A collate function padding every token sequence to the batch's longest; attention_mask marks real tokens."""
    def pad_batch(samples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s in samples)
        batch = {}
        for key in samples[0]:
            if key == "labels":
                continue
            fill = pad_id if key == "input_ids" else 0
            padded = torch.full((len(samples), longest), fill, dtype=torch.long)
            for row, sample in enumerate(samples):
                padded[row, :len(sample[key])] = sample[key]
            batch[key] = padded
        lengths = torch.tensor([len(s["input_ids"]) for s in samples])
        batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        batch["labels"] = torch.stack([torch.as_tensor(s["labels"]) for s in samples])
        return batch
    return pad_batch
