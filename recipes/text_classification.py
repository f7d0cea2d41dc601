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
from functools import partial
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, Value, load_dataset
from torch import nn

from framework import TrainingConfig, run_main
from framework.baseline import score, tfidf_logistic_regression, wanted
from framework.config import flag, require
from framework.data import check_labels
from framework.errors import UserError
from framework.local_data import check_complete_rows, load_local_file
from framework.recipe import Recipe, RecipeData, run

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
    test_file: str = flag("A local file of texts to classify with --do_predict (the label column optional: with "
                          "it, a test report too).", default="")
    text_column: str = flag("The column holding the text.", default="text")
    label_column: str = flag("The column holding the label (integers, or class names).", default="label")
    max_length: int = flag("Tokens kept per text.", default=128)
    vocab_size: int = flag("Words in the vocabulary built from the training split (with [PAD] and [UNK]).",
                           default=20000)
    d_model: int = flag("Width of the encoder.", default=128)
    num_layers: int = flag("Encoder layers.", default=2)
    num_heads: int = flag("Attention heads.", default=4)
    dropout: float = flag("Dropout in the encoder and before the head, in [0, 1).", default=0.1)
    baseline: str = flag("Also fit TF-IDF (word 1-2-grams) + logistic regression on the same split and report it "
                         "beside the network: true, false, or auto (below 200k training texts).", default="auto")
    model_name_or_path: str = flag("Fine-tune this pretrained transformers model (Hub name or folder) with its "
                                   "own tokenizer instead of the small encoder; needs `pip install transformers`.",
                                   default="")

    def validate(self) -> None:
        super().validate()
        require("train_file", not (self.dataset_name and self.train_file), "given, or --dataset_name, but not both")
        require("train_file", not self.do_train or bool(self.dataset_name or self.train_file),
                "given (or --dataset_name) to train")
        require("validation_file", self.do_train or not self.do_eval or bool(self.dataset_name or self.validation_file),
                "given (or --dataset_name) to evaluate without training")
        require("test_file", not self.do_predict or bool(self.test_file), "given with --do_predict")
        require("baseline", self.baseline in ("auto", "true", "false"), "auto, true or false")
        for name in ("max_length", "d_model", "num_layers", "num_heads"):
            require(name, getattr(self, name) >= 1, "an integer >= 1")
        require("vocab_size", self.vocab_size >= 3, "an integer >= 3")
        require("d_model", self.d_model % self.num_heads == 0, f"a multiple of --num_heads ({self.num_heads})")
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")


def load_splits(config: TextConfig) -> tuple[Dataset | None, Dataset | None]:
    """The raw train and evaluation splits the run needs (None for one it does not), Hub or local files."""
    if config.dataset_name:
        data = load_dataset(config.dataset_name, config.dataset_config or None)
        evaluation = next((data[s] for s in ("validation", "test") if s in data), None)
        if evaluation is None and config.do_eval:
            raise UserError(f"--dataset_name {config.dataset_name!r} has no validation or test split")
        return (data["train"] if config.do_train else None), (evaluation if config.do_eval else None)
    columns = [config.text_column, config.label_column]
    train = evaluation = None
    if config.do_train:
        train = load_local_file(config.train_file, "--train_file")
        check_complete_rows(train, columns, config.train_file, "--train_file")
    if config.do_eval and config.validation_file:
        evaluation = load_local_file(config.validation_file, "--validation_file")
        check_complete_rows(evaluation, columns, config.validation_file, "--validation_file")
    elif config.do_eval:
        split = train.train_test_split(test_size=0.1, seed=0)
        train, evaluation = split["train"], split["test"]
    return train, evaluation


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


def build_tokenizer(config: TextConfig, train: Dataset | None, trained=None):
    """The pretrained tokenizer, the one saved with the --model_path run, or a WordTokenizer built from
    the training texts."""
    if trained is not None and not config.do_train:
        if config.model_name_or_path:
            return _transformers().AutoTokenizer.from_pretrained(str(trained.run_dir))
        vocab = json.loads((trained.run_dir / "vocab.json").read_text())
        return WordTokenizer(vocab, config.max_length)
    if config.model_name_or_path:
        return load_tokenizer(config)
    return WordTokenizer(build_vocab(train[config.text_column], config.vocab_size), config.max_length)


def build_data(config: TextConfig, trained=None) -> RecipeData:
    """Tokenized splits (the ones the run needs), class names and the tokenizer (saved with the run)."""
    train, evaluation = load_splits(config)
    test = None
    if config.do_predict:
        test = load_local_file(config.test_file, "--test_file")
        check_complete_rows(test, [config.text_column], config.test_file, "--test_file")
    for what, split in (("training data", train), ("evaluation data", evaluation), ("test data", test)):
        if split is not None and config.text_column not in split.column_names:
            raise UserError(f"the {what} has no text column {config.text_column!r} "
                            f"(columns: {', '.join(split.column_names)}; set --text_column)")
    if train is not None:
        names, train = class_names_of(train, config.label_column)
        check_labels(train, len(names), column=config.label_column, name="training data")
    else:
        names = list(trained.class_names)
    if evaluation is not None:
        evaluation = to_class_ids(evaluation, config.label_column, names, "evaluation data")
    if test is not None:
        test = to_class_ids(test, config.label_column, names, "test data", required=False)
    tokenizer = build_tokenizer(config, train, trained)
    baseline = None
    if train is not None and evaluation is not None and wanted(config.baseline, len(train)):
        texts = (train[config.text_column], train[config.label_column], evaluation[config.text_column],
                 evaluation[config.label_column])
        baseline = partial(score, tfidf_logistic_regression(), *texts)

    def tokenize(batch):
        encoded = tokenizer(batch[config.text_column], truncation=True, max_length=config.max_length)
        # attention_mask is rebuilt per batch by the collate function, after padding
        return {**{k: v for k, v in encoded.items() if k != "attention_mask"}, "labels": batch[config.label_column]}

    def prepare(split: Dataset | None) -> Dataset | None:
        if split is None:
            return None
        return split.map(tokenize, batched=True, remove_columns=split.column_names).with_format("torch")

    return RecipeData(names, train=prepare(train), eval=prepare(evaluation), test=prepare(test),
                      collate_fn=padder(tokenizer.pad_token_id), preprocessing=tokenizer, baseline=baseline)


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

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The encoder layers, for --gradient_checkpointing."""
        return list(self.encoder.layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) + self.positions[:input_ids.shape[1]]
        hidden = self.norm(self.encoder(hidden, src_key_padding_mask=attention_mask == 0))
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))


def build_model(config: TextConfig, data: RecipeData) -> nn.Module:
    """The pretrained classifier of --model_name_or_path, or the small encoder over the tokenizer's vocabulary."""
    if config.model_name_or_path:
        return load_pretrained_classifier(config, len(data.class_names))
    return TextEncoder(config, len(data.preprocessing.vocab), len(data.class_names))


def save_tokenizer(data: RecipeData, folder: Path) -> None:
    """vocab.json, or the pretrained tokenizer's files, beside the weights."""
    data.preprocessing.save_pretrained(str(folder))


def export_pretrained(config: TextConfig, model: nn.Module, data: RecipeData, folder: Path) -> None:
    """With --model_name_or_path, write the fine-tuned model as transformers expects it (config.json with
    the class names as id2label, unprefixed weights), so AutoModelForSequenceClassification loads the folder."""
    if not config.model_name_or_path:
        return
    inner = model.model
    inner.config.id2label = dict(enumerate(data.class_names))
    inner.config.label2id = {name: i for i, name in enumerate(data.class_names)}
    inner.save_pretrained(str(folder))  # replaces model.safetensors with the same weights, transformers' names


RECIPE = Recipe(TextConfig, build_data, build_model, save_preprocessing=save_tokenizer, export=export_pretrained,
                model_flags=("model_name_or_path", "max_length", "vocab_size", "d_model", "num_layers", "num_heads"))


def main(argv: list[str] | None = None) -> None:
    """Parse flags, then train, evaluate and predict as they say (framework.recipe.run)."""
    run(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
