"""Text batches: the tokenize function of a batch of rows, and the padding collate function."""

from __future__ import annotations

from typing import Any

import torch


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
