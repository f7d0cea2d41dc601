"""Splits of a Hugging Face Hub dataset: the training split and the first evaluation split it has."""

from __future__ import annotations

from typing import Any, Optional

from datasets import load_dataset

from framework.core.errors import FlagError

EVALUATION_SPLITS = ("validation", "test")


def load_hub_splits(name: str, config_name: str = "", *, train: bool = True, evaluate: bool = True,
                    streaming: bool = False) -> tuple[Optional[Any], Optional[Any]]:
    """The `train` split and the evaluation split (`validation`, else `test`) of Hub dataset `name`
    (as streams with `streaming`: nothing is downloaded before it is read); None for one not asked for.
    A dataset without an evaluation split is refused when one is needed."""
    data = load_dataset(name, config_name or None, streaming=streaming)
    evaluation = next((data[s] for s in EVALUATION_SPLITS if s in data), None)
    if evaluation is None and evaluate:
        raise FlagError("dataset_name", f"{name!r} has no {' or '.join(EVALUATION_SPLITS)} split")
    if train and "train" not in data:
        raise FlagError("dataset_name", f"{name!r} has no train split (splits: {', '.join(data)})")
    return (data["train"] if train else None), (evaluation if evaluate else None)
