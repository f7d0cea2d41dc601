"""Text classification: any Hugging Face text dataset or local csv/json/parquet files, a small transformer encoder.

The tokenizer needs no download: a word vocabulary built from the training split
(saved as output_dir/vocab.json). Batches are padded to their longest sequence;
padding is masked out of attention and pooling, so accumulation stays exact.

    # local files (a `text` column and a `label` column: integers or class names)
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/text_classification.py \\
        --train_file train.csv --validation_file valid.csv --output_dir outputs/text
    # a Hub dataset on 1 GPU, and on 8 GPUs of one node
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/text_classification.py \\
        --dataset_name ag_news --output_dir outputs/ag_news
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/text_classification.py \\
        --dataset_name glue --dataset_config sst2 --text_column sentence --per_device_train_batch_size 64
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, load_dataset
from torch import nn

from framework import (RunDirectory, TrainingConfig, build_accelerator, build_eval_loader, build_optimizer,
                       build_scheduler, build_train_data, fit, parse_config, run_main, total_optimizer_steps)
from framework.config import flag, require
from framework.data import check_labels
from framework.errors import UserError
from framework.local_data import load_local_file

PAD, UNK = 0, 1
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class TextConfig(TrainingConfig):
    """Hyperparameters of the text recipe (the data flags follow HF's run_glue/run_classification)."""

    output_dir: str = "outputs/text"
    num_train_epochs: int = 5
    warmup_steps: int = 20
    dataset_name: str = flag("A Hub dataset, e.g. ag_news, imdb or glue (with --dataset_config).", default="")
    dataset_config: str = flag("The Hub dataset's configuration, e.g. sst2.", default="")
    train_file: str = flag("A local csv/json/jsonl/parquet training file (instead of --dataset_name).", default="")
    validation_file: str = flag("A local evaluation file; without it 10% of the training file is held out.",
                                default="")
    text_column: str = flag("The column holding the text.", default="text")
    label_column: str = flag("The column holding the label (integers, or class names).", default="label")
    max_length: int = flag("Tokens kept per text.", default=128)
    vocab_size: int = flag("Words in the vocabulary built from the training split (with [PAD] and [UNK]).",
                           default=20000)
    d_model: int = flag("Width of the encoder.", default=128)
    num_layers: int = flag("Encoder layers.", default=2)
    num_heads: int = flag("Attention heads.", default=4)
    dropout: float = flag("Dropout in the encoder and before the head, in [0, 1).", default=0.1)

    def validate(self) -> None:
        super().validate()
        require("train_file", bool(self.dataset_name) != bool(self.train_file),
                "given, or --dataset_name, but not both")
        for name in ("max_length", "d_model", "num_layers", "num_heads"):
            require(name, getattr(self, name) >= 1, "an integer >= 1")
        require("vocab_size", self.vocab_size >= 3, "an integer >= 3")
        require("d_model", self.d_model % self.num_heads == 0, f"a multiple of --num_heads ({self.num_heads})")
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")


def load_splits(config: TextConfig) -> tuple[Dataset, Dataset]:
    """The raw train and evaluation splits, from the Hub or from local files."""
    if config.dataset_name:
        data = load_dataset(config.dataset_name, config.dataset_config or None)
        evaluation = next((data[s] for s in ("validation", "test") if s in data), None)
        if evaluation is None:
            raise UserError(f"--dataset_name {config.dataset_name!r} has no validation or test split")
        return data["train"], evaluation
    train = load_local_file(config.train_file, "--train_file")
    if config.validation_file:
        return train, load_local_file(config.validation_file, "--validation_file")
    split = train.train_test_split(test_size=0.1, seed=0)
    return split["train"], split["test"]


def class_names_of(train: Dataset, evaluation: Dataset, column: str) -> tuple[list[str], Dataset, Dataset]:
    """Class names from the dataset's ClassLabel feature, or from string labels (sorted), or 0..max."""
    for name, split in (("training", train), ("evaluation", evaluation)):
        if column not in split.column_names:
            raise UserError(f"the {name} data has no label column {column!r} "
                            f"(columns: {', '.join(split.column_names)}; set --label_column)")
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), train, evaluation
    values = train[column]
    if values and isinstance(values[0], str):
        train = train.class_encode_column(column)  # class names sorted, as ClassLabel
        names = list(train.features[column].names)
        unknown = sorted(set(evaluation[column]) - set(names))
        if unknown:
            raise UserError(f"the evaluation data has label {unknown[0]!r}, not among the training labels")
        return names, train, evaluation.cast_column(column, train.features[column])
    return [str(i) for i in range(max(values) + 1)], train, evaluation


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return WORD.findall(text.lower())


def build_vocab(texts: list[str], size: int) -> dict[str, int]:
    """The `size - 2` most frequent words (ties broken alphabetically) after [PAD]=0 and [UNK]=1."""
    counts = Counter(w for text in texts for w in words(text))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size - 2]
    return {"[PAD]": PAD, "[UNK]": UNK, **{w: i + 2 for i, (w, _) in enumerate(ranked)}}


def build_data(config: TextConfig) -> tuple[Dataset, Dataset, list[str], dict[str, int]]:
    """Tokenized train and evaluation sets (input_ids, labels), class names and the vocabulary."""
    train, evaluation = load_splits(config)
    if config.text_column not in train.column_names:
        raise UserError(f"the training data has no text column {config.text_column!r} "
                        f"(columns: {', '.join(train.column_names)}; set --text_column)")
    names, train, evaluation = class_names_of(train, evaluation, config.label_column)
    for name, split in (("training data", train), ("evaluation data", evaluation)):
        check_labels(split, len(names), column=config.label_column, name=name)
    vocab = build_vocab(train[config.text_column], config.vocab_size)

    def tokenize(batch):
        ids = [[vocab.get(w, UNK) for w in words(t)][:config.max_length] or [UNK] for t in batch[config.text_column]]
        return {"input_ids": ids, "labels": batch[config.label_column]}

    def prepare(split: Dataset) -> Dataset:
        return split.map(tokenize, batched=True, remove_columns=split.column_names).with_format("torch")

    return prepare(train), prepare(evaluation), names, vocab


def pad_batch(samples: list[dict]) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of the batch; attention_mask is 1 on real tokens."""
    longest = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), longest), PAD, dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, :len(sample["input_ids"])] = sample["input_ids"]
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(),
            "labels": torch.stack([torch.as_tensor(s["labels"]) for s in samples])}


class TextEncoder(nn.Module):
    """Embeddings + sinusoidal positions, a pre-norm transformer encoder, masked mean pooling, a linear head."""

    def __init__(self, config: TextConfig, vocab_size: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, config.d_model, padding_idx=PAD)
        position = torch.arange(config.max_length).unsqueeze(1)
        freq = torch.exp(torch.arange(0, config.d_model, 2) * (-math.log(10000.0) / config.d_model))
        table = torch.zeros(config.max_length, config.d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * freq), torch.cos(position * freq[:config.d_model // 2])
        self.register_buffer("positions", table, persistent=False)
        layer = nn.TransformerEncoderLayer(config.d_model, config.num_heads, 4 * config.d_model, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.d_model, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) + self.positions[:input_ids.shape[1]]
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build data and model, train, evaluate, write the outputs."""
    config = parse_config(TextConfig, argv)
    accelerator, precision = build_accelerator(config)
    run_dir = RunDirectory(config.output_dir, accelerator.is_main_process)
    run_dir.claim(overwrite=config.overwrite_output_dir, resuming=config.resume_from_checkpoint is not None)

    with accelerator.main_process_first():  # the main process downloads and caches; the others reuse it
        train_set, eval_set, class_names, vocab = build_data(config)
    if accelerator.is_main_process:
        (Path(config.output_dir) / "vocab.json").write_text(json.dumps(vocab))
    train_data = build_train_data(train_set, config, accelerator, collate_fn=pad_batch)
    eval_loader = build_eval_loader(eval_set, config, accelerator, collate_fn=pad_batch)

    model = TextEncoder(config, len(vocab), len(class_names)).to(accelerator.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_optimizer_steps(config, train_data.plan.windows_per_epoch))
    model, optimizer = accelerator.prepare(model, optimizer)

    fit(accelerator, config, model, optimizer, scheduler, train_data, eval_loader,
        class_names=class_names, precision=precision, run_dir=run_dir)
    accelerator.end_training()


if __name__ == "__main__":
    raise SystemExit(run_main(main))
