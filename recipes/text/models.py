"""The text recipe's own models: an n-gram linear classifier (the default) and a small transformer encoder."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from framework import KeyedDropout

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
    step costs what its batch touches instead of the whole table (framework.sparse_updates_apply
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


class EncoderLayer(nn.Module):
    """A pre-norm transformer encoder layer whose dropouts are keyed per sample (framework.KeyedDropout).

    torch's `nn.TransformerEncoderLayer(norm_first=True, activation="gelu")` with the same
    parameter names, so its weights load either way, but its dropouts (after attention, inside
    and after the feed-forward block) draw from the random stream. The attention weights
    themselves are not dropped out: their mask would depend on the padded length.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout, self.dropout1, self.dropout2 = (KeyedDropout(dropout) for _ in range(3))

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(hidden)
        attended = self.self_attn(normed, normed, normed, key_padding_mask=padding, need_weights=False)[0]
        hidden = hidden + self.dropout1(attended)
        inner = self.dropout(nn.functional.gelu(self.linear1(self.norm2(hidden))))
        return hidden + self.dropout2(self.linear2(inner))


class Encoder(nn.Module):
    """A stack of `EncoderLayer`s."""

    def __init__(self, num_layers: int, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, dropout) for _ in range(num_layers))

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden, padding)
        return hidden


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
        self.encoder = Encoder(num_layers, d_model, num_heads, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(KeyedDropout(dropout), nn.Linear(d_model, num_classes))

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The encoder layers, for --gradient_checkpointing."""
        return list(self.encoder.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) + self.positions[:input_ids.shape[1]]
        hidden = self.norm(self.encoder(hidden, attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
