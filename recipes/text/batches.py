"""Text batches: the tokenize function of a batch of rows, and the padding collate function."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from framework import column_tensor, pad_list_column


class Padder:
    """The collate function of token sequences: each padded to the batch's longest (token ids with `pad_id`, any
    other list column with 0), `attention_mask` marking the real tokens, `labels` stacked.

    Rows (a list of samples) are padded one by one; a micro-batch read as one Arrow table (`collate_table`, which
    the framework calls where it can) is padded in NumPy, with the same tensors as a result."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(s["input_ids"]) for s in samples)
        batch = {}
        for key in samples[0]:
            if key == "labels":
                continue
            fill = self.pad_id if key == "input_ids" else 0
            padded = torch.full((len(samples), longest), fill, dtype=torch.long)
            for row, sample in enumerate(samples):
                padded[row, :len(sample[key])] = sample[key]
            batch[key] = padded
        lengths = torch.tensor([len(s["input_ids"]) for s in samples])
        batch["attention_mask"] = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        batch["labels"] = torch.stack([torch.as_tensor(s["labels"]) for s in samples])
        return batch

    def collate_table(self, table) -> dict[str, torch.Tensor]:
        """The same batch from a micro-batch read as one Arrow table."""
        batch, lengths = {}, None
        for key in table.column_names:
            if key == "labels":
                continue
            padded, key_lengths = pad_list_column(table[key], self.pad_id if key == "input_ids" else 0)
            batch[key] = torch.from_numpy(padded)
            if key == "input_ids":
                lengths = key_lengths
        mask = np.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]
        batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        batch["labels"] = column_tensor(table["labels"])
        return batch


def padder(pad_id: int) -> Padder:
    """The padding collate function for `pad_id` (see `Padder`)."""
    return Padder(pad_id)


def tokenizer_function(kind: str, tokenizer, features, text_column: str, label_column: str, max_length: int):
    """The batched function that turns a batch of rows ({column: values}, labels already class ids or indicator
    rows) into model
    inputs plus `labels`: the n-gram features (Arrow columns), the encoder's token ids, or a pretrained
    tokenizer's output. It holds only what shapes its output: datasets' cache key of a prepared split is a
    hash of it, so a run that changes the learning rate, say, reuses the prepared splits."""
    from text.features import token_ids

    def tokenize(batch: dict) -> Any:
        texts = batch[text_column]
        if kind == "ngram":  # Arrow columns straight from the features' flat arrays
            import pyarrow as pa

            labels = batch[label_column]  # class ids, or multi-label indicator rows
            typed = pa.list_(pa.int8()) if labels and isinstance(labels[0], list) else pa.int64()
            return pa.table({**features.arrow(texts), "labels": pa.array(labels, typed)})
        if kind == "transformer":
            encoded = {"input_ids": token_ids(tokenizer, texts, max_length)}
        else:  # attention_mask is rebuilt per batch by the collate function, after padding
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
            encoded = {k: v for k, v in encoded.items() if k != "attention_mask"}
        return {**encoded, "labels": batch[label_column]}
    return tokenize
