"""Text classification: any Hugging Face text dataset or local csv/json/parquet files.

Two models of its own, chosen with --model, and no download: `ngram` (the default),
a linear classifier over TF-IDF-weighted word tokens, word bigrams and character
2-5-grams (hashed), trained with SGD, within a point of the best classic linear
models on the small real sets of bench/RESULTS.md; and `transformer`, a small
encoder. Both read the tokens of a BPE tokenizer (the `tokenizers` library) trained
on the training split and saved as output_dir/tokenizer.json. With
`--model_name_or_path` (and `pip install transformers`) a pretrained model is
fine-tuned with its own tokenizer instead.
Every sample's loss is its own (padding is masked), so accumulation stays exact.

    # local files (a `text` column and a `label` column of class names: strings or whole numbers)
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/text_classification.py \\
        --train_file train.csv --validation_file valid.csv --output_dir outputs/text
    # a Hub dataset on 1 GPU, and on 8 GPUs of one node
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/text_classification.py \\
        --dataset_name ag_news --output_dir outputs/ag_news
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/text_classification.py \\
        --dataset_name glue --dataset_config sst2 --text_column sentence --per_device_train_batch_size 64
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
from accelerate import PartialState
from datasets import Dataset
from tokenizers import Tokenizer
from torch import nn

from framework import (
    FlagError,
    Recipe,
    RecipeData,
    TrainingConfig,
    UserError,
    cached_beside,
    check_complete_rows,
    column_batches,
    flag,
    load_hub_splits,
    load_local_file,
    map_with_progress,
    preparation_workers,
    require,
    require_column,
    run,
    run_main,
    score,
    sparse_updates_apply,
    stratified_hold_out,
    tfidf_logistic_regression,
    to_class_ids,
    to_model_labels,
    training_classes,
    wanted,
)

from text.batches import padder, tokenizer_function
from text.features import (
    PAD_ID,
    NgramFeatures,
    fingerprint,
    inverse_document_frequency,
    parse_char_ngrams,
    texts_idf,
    train_tokenizer,
)
from text.models import NgramClassifier, TextEncoder
from text.pretrained import load_pretrained_classifier, load_tokenizer, save_in_transformers_layout
from text.streaming import first_texts, open_streams, stream_class_names, stream_preparer, with_class_ids

TOKENIZER_FILE = "tokenizer.json"
# Defaults that depend on the model (measured on the real sets of bench/RESULTS.md; the pretrained ones are
# HF Trainer's). A flag given on the command line or in --config wins.
MODEL_DEFAULTS = {
    # The n-gram model is convex: SGD finds the weights that generalize on small sets, where AdamW's
    # per-coordinate steps fit rare n-grams (bench/RESULTS.md: -8 points on a 460-text set). Plain SGD
    # (no momentum) scores as SGD with momentum 0.9 did on the real sets, and lets a step update only the
    # rows its batch touches (framework.train.sparse): its cost no longer grows with the table.
    "ngram": {"optim": "sgd", "momentum": 0.0, "learning_rate": 25.0, "num_train_epochs": 20},
    "transformer": {"optim": "adamw", "momentum": 0.9, "learning_rate": 1e-3, "num_train_epochs": 5},
    "pretrained": {"optim": "adamw", "momentum": 0.9, "learning_rate": 5e-5, "num_train_epochs": 3},
}


@dataclass
class TextConfig(TrainingConfig):
    """Hyperparameters of the text recipe (the data flags follow HF's run_glue/run_classification)."""

    output_dir: str = "outputs/text"
    optim: Optional[str] = flag("Optimizer: adamw or sgd (with --momentum); default: sgd for --model ngram, adamw "
                                "otherwise.", default=None)
    momentum: Optional[float] = flag("--optim sgd: momentum, in [0, 1); default: 0 for --model ngram (its steps then "
                                     "touch only the rows of their batch), 0.9 otherwise.", default=None)
    learning_rate: Optional[float] = flag("Peak learning rate; default: 25 for --model ngram (SGD), 1e-3 for "
                                          "transformer, 5e-5 with --model_name_or_path.", default=None)
    num_train_epochs: Optional[int] = flag("Passes over the training set (ignored when max_steps > 0); default: 20 "
                                           "for --model ngram, 5 for transformer, 3 with --model_name_or_path.",
                                           default=None)
    warmup_ratio: float = 0.05
    dataset_name: str = flag("A Hub dataset, e.g. ag_news, imdb or glue (with --dataset_config).", default="")
    dataset_config: str = flag("The Hub dataset's configuration, e.g. sst2.", default="")
    train_file: str = flag("A local csv/json/jsonl/parquet training file (instead of --dataset_name).", default="")
    validation_file: str = flag("A local evaluation file; without it 10% of each class of the training file is held "
                                "out.",
                                default="")
    test_file: str = flag("A local file of texts to classify with --do_predict (the label column optional: with "
                          "it, a test report too).", default="")
    text_column: str = flag("The column holding the text.", default="text")
    label_column: str = flag("The column holding the label: class names, as strings or whole numbers (1, 2, 3 are "
                             "three classes named '1', '2', '3').", default="label")
    model: str = flag("The recipe's own model: ngram (linear over TF-IDF-weighted tokens, word bigrams and "
                      "character n-grams) or transformer (a small encoder). Not used with --model_name_or_path.",
                      default="ngram")
    vocab_size: int = flag("Entries of the BPE tokenizer trained on the training split (with [PAD], [UNK]).",
                           default=20000)
    ngram_buckets: int = flag("--model ngram: hash slots for word bigrams, and as many for character n-grams "
                              "(fewer: faster and smaller, more collisions).", default=262144)
    char_ngrams: str = flag("--model ngram: lengths of the character n-grams of each word, e.g. 2-5, or 0 for "
                            "none.", default="2-5")
    max_length: int = flag("Tokens kept per text by the transformer models (--model ngram reads all of it).",
                           default=128)
    d_model: int = flag("--model transformer: width of the encoder.", default=128)
    num_layers: int = flag("--model transformer: encoder layers.", default=2)
    num_heads: int = flag("--model transformer: attention heads.", default=4)
    dropout: float = flag("--model transformer: dropout in the encoder and before the head, in [0, 1).",
                          default=0.1)
    baseline: str = flag("Also fit TF-IDF (word 1-2-grams) + logistic regression on the same split and report it "
                         "beside the network: true, false, or auto (below 200k training texts).", default="auto")
    preprocessing_num_workers: str = flag("Processes that turn texts into model inputs: auto (every core, for a "
                                          "split of 20,000 texts or more; one below) or a number.", default="auto")
    streaming: bool = flag("Read the training and evaluation data as streams (local csv/json/jsonl/parquet files, a "
                           "folder saved with datasets' save_to_disk, or --dataset_name): training starts without a "
                           "pass over the data. Needs --max_steps, and --label_names for data without class-label "
                           "features.", default=False)
    label_names: str = flag("With --streaming: the class names, comma-separated (a stream's labels are not known "
                            "before a pass over it).", default="")
    streaming_shuffle_buffer: int = flag("With --streaming: rows held in the shuffle buffer (datasets' "
                                         "IterableDataset.shuffle, reshuffled each epoch); 0 trains in stored order.",
                                         default=10000)
    streaming_fit_rows: int = flag("With --streaming: the tokenizer (and the n-gram IDF) are fit on this many first "
                                   "training rows.", default=100000)
    overwrite_cache: bool = flag("Read the files and prepare the texts again instead of reusing what datasets "
                                 "cached for the same files (checked by content) and preparation flags.",
                                 default=False)
    model_name_or_path: str = flag("Fine-tune this pretrained transformers model (Hub name or folder) with its "
                                   "own tokenizer instead of --model; needs `pip install transformers`.",
                                   default="")

    @property
    def model_kind(self) -> str:
        """ngram, transformer, or pretrained (--model_name_or_path)."""
        return "pretrained" if self.model_name_or_path else self.model

    def fill_defaults(self) -> None:
        """Flags left unset (None) take the defaults of the model that runs (the runner validates after
        --model_path's flags are adopted, so this is the trained run's model)."""
        super().fill_defaults()
        if self.model in MODEL_DEFAULTS or self.model_name_or_path:
            for name, value in MODEL_DEFAULTS[self.model_kind].items():
                if getattr(self, name) is None:
                    setattr(self, name, value)

    def validate(self) -> None:
        require("model", self.model in ("ngram", "transformer"), "ngram or transformer")
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
        workers = self.preprocessing_num_workers
        require("preprocessing_num_workers", workers == "auto" or (workers.isdigit() and int(workers) >= 1),
                "auto or an integer >= 1")
        require("ngram_buckets", self.ngram_buckets >= 1, "an integer >= 1")
        if self.streaming:
            require("problem_type", not self.multi_label, "single_label_classification with --streaming (a "
                    "stream's label sets are not read before training)")
            require("max_steps", self.max_steps >= 1 or not self.do_train, "set with --streaming (a stream's length, "
                    "and so an epoch's steps, is not known before a pass over it)")
            require("validation_file", not self.do_eval or bool(self.dataset_name or self.validation_file),
                    "given with --streaming (a stream cannot hold 10% out without a pass over it)")
            require("baseline", self.baseline != "true", "auto or false with --streaming (the baseline fits on "
                    "the whole training split)")
            require("streaming_shuffle_buffer", self.streaming_shuffle_buffer >= 0, "an integer >= 0")
            require("streaming_fit_rows", self.streaming_fit_rows >= 1, "an integer >= 1")
        try:
            parse_char_ngrams(self.char_ngrams)
        except ValueError:
            require("char_ngrams", False, "a range like 2-5 (lengths >= 1), one length like 3, or 0 for none")
        require("d_model", self.d_model % self.num_heads == 0, f"a multiple of --num_heads ({self.num_heads})")
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")


def load_splits(config: TextConfig) -> tuple[Dataset | None, Dataset | None]:
    """The raw train and evaluation splits the run needs (None for one it does not), Hub or local files."""
    if config.dataset_name:
        return load_hub_splits(config.dataset_name, config.dataset_config, train=config.do_train,
                               evaluate=config.do_eval)
    columns, texts = [config.text_column, config.label_column], (config.text_column,)
    train = evaluation = None
    if config.do_train:
        train = load_local_file(config.train_file, "--train_file", columns, config.overwrite_cache)
        check_complete_rows(train, columns, config.train_file, "--train_file", texts, config.multi_label)
    if config.do_eval and config.validation_file:
        evaluation = load_local_file(config.validation_file, "--validation_file", columns, config.overwrite_cache)
        check_complete_rows(evaluation, columns, config.validation_file, "--validation_file", texts,
                            config.multi_label)
    for what, split in (("training data", train), ("evaluation data", evaluation)):
        for column, name in ((config.text_column, "text"), (config.label_column, "label")):
            if split is not None:
                require_column(split.column_names, column, f"the {what}", name, f"set --{name}_column")
    if config.do_eval and not config.validation_file:
        if len(train) < 2:
            raise FlagError("train_file", f"{config.train_file!r} holds {len(train)} row: too few to hold 10% out for "
                            f"evaluation; give --validation_file, or --do_eval false")
        train, evaluation = stratified_hold_out(train, config.label_column, 0.1)
    return train, evaluation


@dataclass
class TextPreprocessing:
    """What turns texts into model inputs, saved with the run: the tokenizer, and for --model ngram the n-gram
    features and their IDF on the training split (the IDF also lives in the model's weights)."""

    tokenizer: Any
    features: Optional[NgramFeatures] = None
    idf: Optional[np.ndarray] = None


def build_tokenizer(config: TextConfig, train: Dataset | list[str] | None, trained=None):
    """The tokenizer of the --model_path run, the pretrained one, or a BPE tokenizer trained on the
    training texts (a split, or with --streaming the first texts)."""
    if trained is not None:
        if config.model_name_or_path:
            return load_tokenizer(str(trained.run_dir))
        saved = trained.run_dir / TOKENIZER_FILE
        if not saved.is_file():
            raise FlagError("model_path", f"{str(trained.run_dir)!r} has no {TOKENIZER_FILE} (a run of an older "
                            f"version of this recipe: train it again)")
        return Tokenizer.from_file(str(saved))
    if config.model_name_or_path:
        return load_tokenizer(config.model_name_or_path)
    if isinstance(train, list):  # --streaming: the first training texts
        return train_tokenizer([train], config.vocab_size)
    # Trained once per data: the next run with the same training split, and the job's other processes
    # (which build after the main process), load it from beside datasets' cache files.
    return cached_beside(train, ["bpe-tokenizer-1", config.vocab_size, config.text_column],
                         lambda: train_tokenizer(column_batches(train, config.text_column, "train tokenizer"),
                                                 config.vocab_size),
                         lambda tokenizer, path: tokenizer.save(path), Tokenizer.from_file, suffix=".json",
                         overwrite=config.overwrite_cache)


def build_stream_data(config: TextConfig, trained=None) -> RecipeData:
    """--streaming: the splits as streams prepared as they are read, the classes from the data's class-label
    feature or --label_names, the tokenizer and IDF fit on the first --streaming_fit_rows training texts."""
    train, evaluation = open_streams(config)
    names = stream_class_names(train if train is not None else evaluation, config) if trained is None \
        else list(trained.class_names)
    texts = first_texts(train, config.text_column, config.streaming_fit_rows) if train is not None else None
    tokenizer = build_tokenizer(config, texts, trained)
    preprocessing = TextPreprocessing(tokenizer)
    if config.model_kind == "ngram":
        preprocessing.features = NgramFeatures(tokenizer, config.ngram_buckets, parse_char_ngrams(config.char_ngrams))
        if texts is not None:
            preprocessing.idf = texts_idf(preprocessing.features, texts)
    tokenize = tokenizer_function(config.model_kind, tokenizer, preprocessing.features, config.text_column,
                                  config.label_column, config.max_length)
    if train is not None:
        train = with_class_ids(train, config.label_column, names, "the training data")
        if config.streaming_shuffle_buffer:
            train = train.shuffle(seed=config.seed, buffer_size=config.streaming_shuffle_buffer)
    if evaluation is not None:
        evaluation = with_class_ids(evaluation, config.label_column, names, "the evaluation data")
    prepare = stream_preparer(tokenize, config.text_column, config.label_column, "the data")
    test = None
    if config.do_predict:
        test = to_class_ids(load_test(config), config.label_column, names, f"--test_file {config.test_file!r}",
                            required=False)
    test = prepare_split(config, test, "test", tokenize)
    pad_id = tokenizer.pad_token_id if config.model_kind == "pretrained" else PAD_ID
    return RecipeData(names, train=train, eval=evaluation, test=test, collate_fn=padder(pad_id),
                      preprocessing=preprocessing, prepare=prepare,
                      fingerprint=fingerprint(tokenizer) if isinstance(tokenizer, Tokenizer) else None)


def load_test(config: TextConfig) -> Dataset:
    """--test_file, read whole and checked (a label column is optional)."""
    test = load_local_file(config.test_file, "--test_file", (config.text_column, config.label_column),
                           config.overwrite_cache)
    require_column(test.column_names, config.text_column, "the test data", "text", "set --text_column")
    check_complete_rows(test, [config.text_column, config.label_column], config.test_file, "--test_file",
                        (config.text_column,), config.multi_label)
    return test


def prepare_split(config: TextConfig, split: Dataset | None, name: str, tokenize) -> Dataset | None:
    """A split through `tokenize` (datasets' map, cached; --preprocessing_num_workers), in torch format."""
    if split is None:
        return None
    return map_with_progress(split, tokenize, desc=f"prepare {name}", remove_columns=split.column_names,
                             num_proc=preparation_workers(config.preprocessing_num_workers, len(split)),
                             load_from_cache_file=not config.overwrite_cache).with_format("torch")


def labelled_splits(config: TextConfig, train: Dataset | None, evaluation: Dataset | None, test: Dataset | None,
                    trained=None) -> tuple[list[str], Dataset | None, Dataset | None, Dataset | None]:
    """The classes (or, multi-label, the labels) of the training split (else of --model_path's run) and every
    split with its labels as class ids (multi-label: indicator rows), matched by name."""
    local = not config.dataset_name
    whats = (f"--train_file {config.train_file!r}" if local else "the training data",
             f"--validation_file {config.validation_file!r}" if local and config.validation_file
             else "the evaluation data", f"--test_file {config.test_file!r}")
    labels = {"multi_label": config.multi_label, "delimiter": config.label_delimiter}
    names, train = training_classes(train, config.label_column, what=whats[0], **labels,
                                    trained_names=trained.class_names if trained else None)
    if evaluation is not None:
        evaluation = to_model_labels(evaluation, config.label_column, names, what=whats[1], **labels)
    if test is not None:
        test = to_model_labels(test, config.label_column, names, what=whats[2], required=False, **labels)
    return names, train, evaluation, test


def build_data(config: TextConfig, trained=None) -> RecipeData:
    """Tokenized splits (the ones the run needs), class names and the tokenizer (saved with the run).

    Runs on every process at once (the Recipe's shared_preparation): streams are opened by each process
    together; prepared splits are built by the main process first, and the others load what it cached."""
    if config.streaming:
        return build_stream_data(config, trained)
    with PartialState().main_process_first():
        return build_prepared_data(config, trained)


def build_prepared_data(config: TextConfig, trained=None) -> RecipeData:
    """The splits read whole and prepared (datasets' map, cached), the tokenizer and IDF cached beside them."""
    train, evaluation = load_splits(config)
    test = load_test(config) if config.do_predict else None
    for what, split in (("training data", train), ("evaluation data", evaluation)):
        if split is None:
            continue
        require_column(split.column_names, config.text_column, f"the {what}", "text", "set --text_column")
        kind = getattr(split.features[config.text_column], "dtype", None)
        if kind not in ("string", "large_string"):
            raise UserError(f"the {what}'s text column {config.text_column!r} holds {kind or 'lists'}, not strings "
                            f"(set --text_column to the column of texts)")
    names, train, evaluation, test = labelled_splits(config, train, evaluation, test, trained)
    tokenizer = build_tokenizer(config, train, trained)
    baseline = None
    if train is not None and evaluation is not None and wanted(config.baseline, len(train)):
        labels = [np.asarray(split[config.label_column]) for split in (train, evaluation)]
        texts = (train[config.text_column], labels[0], evaluation[config.text_column], labels[1])
        baseline = partial(score, tfidf_logistic_regression(multi_label=config.multi_label), *texts)
    preprocessing = TextPreprocessing(tokenizer)
    if config.model_kind == "ngram":
        preprocessing.features = NgramFeatures(tokenizer, config.ngram_buckets, parse_char_ngrams(config.char_ngrams))

    tokenize = tokenizer_function(config.model_kind, tokenizer, preprocessing.features, config.text_column,
                                  config.label_column, config.max_length)
    raw_eval, text_column = evaluation, config.text_column

    def describe_eval(indices: list[int]) -> dict[str, list]:  # errors.csv shows the texts
        return {"text": list(raw_eval.select(indices)[text_column])}

    train, evaluation = prepare_split(config, train, "train", tokenize), prepare_split(config, evaluation, "eval", tokenize)
    test = prepare_split(config, test, "test", tokenize)
    if train is not None and preprocessing.features is not None:
        num_features = preprocessing.features.num_features
        preprocessing.idf = cached_beside(train, ["idf", num_features],
                                          lambda: inverse_document_frequency(train, num_features),
                                          lambda idf, path: np.save(path, idf), np.load, suffix=".npy",
                                          overwrite=config.overwrite_cache)
    pad_id = tokenizer.pad_token_id if config.model_kind == "pretrained" else PAD_ID
    return RecipeData(names, train=train, eval=evaluation, test=test, collate_fn=padder(pad_id),
                      preprocessing=preprocessing, baseline=baseline,
                      fingerprint=fingerprint(tokenizer) if isinstance(tokenizer, Tokenizer) else None,
                      describe_eval=describe_eval if raw_eval is not None else None)


def build_model(config: TextConfig, data: RecipeData) -> nn.Module:
    """The pretrained classifier of --model_name_or_path, or the recipe's --model over the tokenizer's output."""
    if config.model_name_or_path:
        return load_pretrained_classifier(config.model_name_or_path, len(data.class_names))
    prep = data.preprocessing
    if config.model == "ngram":  # idf None (evaluation of a --model_path run): the saved weights bring it
        return NgramClassifier(prep.features.num_features, len(data.class_names), prep.idf,
                               char_start=prep.features.char_start, sparse=sparse_updates_apply(config))
    return TextEncoder(prep.tokenizer.get_vocab_size(), len(data.class_names), d_model=config.d_model,
                       num_layers=config.num_layers, num_heads=config.num_heads, max_length=config.max_length,
                       dropout=config.dropout)


def save_tokenizer(data: RecipeData, folder: Path) -> None:
    """tokenizer.json (or the pretrained tokenizer's files) beside the weights."""
    tokenizer = data.preprocessing.tokenizer
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    else:
        tokenizer.save(str(folder / TOKENIZER_FILE))


def export_pretrained(config: TextConfig, model: nn.Module, data: RecipeData, folder: Path) -> None:
    """With --model_name_or_path, also write the fine-tuned model in transformers' layout."""
    if config.model_name_or_path:
        save_in_transformers_layout(model, data.class_names, folder)


RECIPE = Recipe(TextConfig, build_data, build_model, save_preprocessing=save_tokenizer, export=export_pretrained,
                model_flags=("model", "model_name_or_path", "vocab_size", "ngram_buckets", "char_ngrams", "max_length",
                             "d_model", "num_layers", "num_heads"), name="text_classification",
                shared_preparation=True)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, then train, evaluate and predict as they say (framework.run)."""
    run(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
