"""Text classification: any Hugging Face text dataset or local csv/json/parquet files, a small transformer encoder.

The tokenizer needs no download: a word vocabulary built from the training split
(saved as output_dir/vocab.json). With `--model_name_or_path` (and `pip install
transformers`) a pretrained model is fine-tuned with its own tokenizer instead. Batches are padded to their longest sequence;
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
from framework.local_data import check_complete_rows, load_local_file

PAD, UNK = 0, 1
WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class TextConfig(TrainingConfig):
    """Hyperparameters of the text recipe (the data flags follow HF's run_glue/run_classification)."""

    output_dir: str = "outputs/text"
    num_train_epochs: int = 5
    warmup_ratio: float = 0.05
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
    model_name_or_path: str = flag("Fine-tune this pretrained transformers model (Hub name or folder) with its "
                                   "own tokenizer instead of the small encoder; needs `pip install transformers`.",
                                   default="")

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
    columns = [config.text_column, config.label_column]
    train = load_local_file(config.train_file, "--train_file")
    check_complete_rows(train, columns, config.train_file, "--train_file")
    if config.validation_file:
        evaluation = load_local_file(config.validation_file, "--validation_file")
        check_complete_rows(evaluation, columns, config.validation_file, "--validation_file")
        return train, evaluation
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
        ids = {name: i for i, name in enumerate(names)}  # by hand: datasets < 3.1 cannot cast names to ClassLabel
        evaluation = evaluation.map(lambda batch: {column: [ids[v] for v in batch[column]]}, batched=True)
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


class WordTokenizer:
    """Word-level tokenizer over a vocabulary built from the training split (no download)."""

    pad_token_id = PAD

    def __init__(self, vocab: dict[str, int], max_length: int):
        self.vocab, self.max_length = vocab, max_length

    def __call__(self, texts: list[str], truncation: bool = True, max_length: int | None = None) -> dict:
        """Token ids of each text (the call signature of a transformers tokenizer)."""
        limit = (max_length or self.max_length) if truncation else None
        ids = [[self.vocab.get(w, UNK) for w in words(t)][:limit] or [UNK] for t in texts]
        return {"input_ids": ids}

    def save_pretrained(self, folder: str) -> None:
        (Path(folder) / "vocab.json").write_text(json.dumps(self.vocab))


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("--model_name_or_path needs the transformers package (pip install transformers)") from None
    return transformers


def _from_pretrained(loader, config: TextConfig, **kwargs):
    try:
        return loader.from_pretrained(config.model_name_or_path, **kwargs)
    except OSError as err:
        raise UserError(f"--model_name_or_path {config.model_name_or_path!r} could not be loaded: "
                        f"{str(err).splitlines()[0]}") from None


def load_tokenizer(config: TextConfig):
    """The tokenizer of `--model_name_or_path` (transformers), or a one-line error."""
    return _from_pretrained(_transformers().AutoTokenizer, config)


def load_pretrained_classifier(config: TextConfig, num_classes: int) -> nn.Module:
    """The pretrained model of `--model_name_or_path` with a fresh `num_classes` head."""
    model = _from_pretrained(_transformers().AutoModelForSequenceClassification, config, num_labels=num_classes,
                             ignore_mismatched_sizes=True)
    return PretrainedClassifier(model)


class PretrainedClassifier(nn.Module):
    """A transformers sequence classifier called with the batch's inputs, returning its logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**inputs).logits


def build_data(config: TextConfig, tokenizer=None):
    """Tokenized train and evaluation sets, class names and the tokenizer.

    Without a (pretrained) `tokenizer`, a WordTokenizer is built from the training texts.
    """
    train, evaluation = load_splits(config)
    if config.text_column not in train.column_names:
        raise UserError(f"the training data has no text column {config.text_column!r} "
                        f"(columns: {', '.join(train.column_names)}; set --text_column)")
    names, train, evaluation = class_names_of(train, evaluation, config.label_column)
    for name, split in (("training data", train), ("evaluation data", evaluation)):
        check_labels(split, len(names), column=config.label_column, name=name)
    if tokenizer is None:
        tokenizer = WordTokenizer(build_vocab(train[config.text_column], config.vocab_size), config.max_length)

    def tokenize(batch):
        encoded = tokenizer(batch[config.text_column], truncation=True, max_length=config.max_length)
        # attention_mask is rebuilt per batch by the collate function, after padding
        return {**{k: v for k, v in encoded.items() if k != "attention_mask"}, "labels": batch[config.label_column]}

    def prepare(split: Dataset) -> Dataset:
        return split.map(tokenize, batched=True, remove_columns=split.column_names).with_format("torch")

    return prepare(train), prepare(evaluation), names, tokenizer


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
    run_dir = RunDirectory.for_run(config, accelerator)

    with accelerator.main_process_first():  # the main process downloads and caches; the others reuse it
        pretrained_tokenizer = load_tokenizer(config) if config.model_name_or_path else None
        train_set, eval_set, class_names, tokenizer = build_data(config, pretrained_tokenizer)
        if config.model_name_or_path:
            model = load_pretrained_classifier(config, len(class_names))
        else:
            model = TextEncoder(config, len(tokenizer.vocab), len(class_names))
    collate = padder(tokenizer.pad_token_id)
    train_data = build_train_data(train_set, config, accelerator, collate_fn=collate)
    eval_loader = build_eval_loader(eval_set, config, accelerator, collate_fn=collate)

    model = model.to(accelerator.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_optimizer_steps(config, train_data.plan.windows_per_epoch))
    model, optimizer = accelerator.prepare(model, optimizer)

    fit(accelerator, config, model, optimizer, scheduler, train_data, eval_loader,
        class_names=class_names, precision=precision, run_dir=run_dir)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(config.output_dir)
    accelerator.end_training()


if __name__ == "__main__":
    raise SystemExit(run_main(main))
