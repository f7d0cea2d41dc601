"""Labels of every split as the model's outputs, single- or multi-label alike: the classes (or labels) named by the
training split, or by a trained model, and each other split mapped onto them by name. Every recipe maps its
splits through these two functions."""

from __future__ import annotations

from typing import Any, Optional, Sequence

from framework.data.labels import class_names_from, to_class_ids
from framework.data.multi_label import multi_label_names_from, to_indicators

LABEL_HINT = "set --label_column"


def training_classes(train: Any, column: str, *, multi_label: bool, delimiter: str = ",",
                     what: str = "the training data", hint: str = LABEL_HINT,
                     trained_names: Optional[Sequence[str]] = None) -> tuple[list[str], Any]:
    """The classes (multi-label: the labels) and the training split with its labels as model outputs (class ids,
    or indicator rows); without a training split, the names of the trained model (`trained_names`)."""
    if train is None:
        return list(trained_names or []), None
    if multi_label:
        return multi_label_names_from(train, column, delimiter, what=what)
    return class_names_from(train, column, what=what, hint=hint)


def to_model_labels(split: Any, column: str, names: Sequence[str], *, multi_label: bool, delimiter: str = ",",
                    what: str, required: bool = True, hint: str = LABEL_HINT) -> Any:
    """`split` with its labels matched by name onto the model's `names` (class ids, or multi-label indicator rows);
    a label the model lacks is refused. Without the label column (allowed where `required` is False: test
    inputs) every label is unknown."""
    if multi_label:
        return to_indicators(split, column, list(names), delimiter, what, required=required)
    return to_class_ids(split, column, list(names), what, required=required, hint=hint)
