"""The text recipe's own models: an n-gram linear classifier (the default) and a small transformer encoder."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from text.features import PAD_ID


class NgramClassifier(nn.Module):
    """fastText-style, but full rank: a linear classifier over TF-IDF-weighted n-gram features.

    A sample is its distinct feature ids and their counts (text.features).
    Each feature is weighted (1 + ln count) * idf; the word features (ids below
    `char_start`: tokens and word bigrams) and the character n-grams are each scaled
    to unit L2 norm per sample, and the logits are the weighted sum of the features'
    rows of a `num_features x num_classes` table plus a bias: scikit-learn's union of
    two sublinear TF-IDF vectorizers with a linear model on top, learned by the
    framework's loop. The IDF (0 for features absent from the training split) and
    `char_start` are buffers, saved with the weights.

    With `sparse=True` the table's gradient holds only the rows of the step's features, so a
    step costs what its batch touches instead of the whole table (framework.train.sparse
    says when that is exact: plain SGD, no NCCL).
    """

    def __init__(self, num_features: int, num_classes: int, idf: np.ndarray | None = None, *, char_start: int,
                 sparse: bool = False):
        super().__init__()
        self.table = nn.EmbeddingBag(num_features, num_classes, mode="sum", padding_idx=PAD_ID, sparse=sparse)
        nn.init.zeros_(self.table.weight)  # a linear model: zero is the natural start
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("idf", torch.ones(num_features))
        self.register_buffer("char_start", torch.tensor(char_start, dtype=torch.long))
        if idf is not None:
            self.idf.copy_(torch.from_numpy(idf))  # a no-op on the meta device (FLOP counting)

    def checkpoint_blocks(self) -> list[nn.Module]:
        """No blocks: one table lookup keeps no activations worth recomputing."""
        return []

    def forward(self, input_ids: torch.Tensor, counts: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        counts = counts.float()
        present = counts > 0  # padding has count 0
        weights = torch.where(present, 1.0 + torch.log(counts.clamp(min=1.0)), 0.0) * self.idf[input_ids]
        is_word = input_ids < self.char_start
        words, chars = torch.where(is_word, weights, 0.0), torch.where(is_word, 0.0, weights)
        # A block with no known feature (norm 0) stays 0 instead of dividing by 0.
        weights = (words / words.norm(dim=1, keepdim=True).clamp(min=1e-12)
                   + chars / chars.norm(dim=1, keepdim=True).clamp(min=1e-12))
        return self.table(input_ids, per_sample_weights=weights) + self.bias


class TextEncoder(nn.Module):
    """Embeddings + sinusoidal positions, a pre-norm transformer encoder, masked mean pooling, a linear head."""

    def __init__(self, vocab_size: int, num_classes: int, *, d_model: int, num_layers: int, num_heads: int,
                 max_length: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        position = torch.arange(max_length).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_length, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq[:d_model // 2])
        self.register_buffer("positions", table, persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, num_classes))

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The encoder layers, for --gradient_checkpointing."""
        return list(self.encoder.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) + self.positions[:input_ids.shape[1]]
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
