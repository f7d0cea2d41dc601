"""Text batches: the padding collate function."""

from __future__ import annotations

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
