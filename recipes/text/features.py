"""Text to model inputs: a `tokenizers` tokenizer trained on the training split, and hashed n-gram features.

`train_tokenizer` fits a byte-pair-encoding (BPE) tokenizer (NFKC, lower case, words
and runs of punctuation) on the training texts in a fraction of a second, without a
download; it is saved as tokenizer.json, which `tokenizers.Tokenizer.from_file` and
transformers' `PreTrainedTokenizerFast(tokenizer_file=...)` both load. Every process
trains its own and must get the same one: tokenizers' BPE trainer is deterministic
(its WordPiece trainer is not: the vocabulary changes from run to run, measured with
tokenizers 0.23), and the recipe runner compares the processes' fingerprints.

`NgramFeatures` turns a text into the features of the n-gram model: its BPE
tokens, its word bigrams and the character n-grams of its words (padded with a
space at each end, as scikit-learn's `char_wb`), the latter two hashed into
`buckets` slots each. Hashing uses CRC-32, so every process and every later run
maps an n-gram to the same slot (Python's `hash` of a string differs per process).
A sample is its distinct feature ids with their counts; the model weighs them. The
word features (tokens and bigrams) and the character n-grams are two blocks, each
scaled to unit norm by the model, as a scikit-learn union of two TF-IDF vectorizers.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0  # [PAD] is trained first: id 0 (padding; never a feature)
WORD_CACHE_LIMIT = 1_000_000  # distinct words whose character n-gram ids are kept (about 0.5 GB at most)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A BPE tokenizer of at most `vocab_size` entries ([PAD]=0, [UNK]=1) learned from `texts`."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words (\w+) and runs of punctuation
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def fingerprint(tokenizer: Tokenizer) -> str:
    """A digest of the tokenizer's JSON: equal on every process, or the processes would disagree on token ids."""
    import hashlib

    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def token_ids(tokenizer: Tokenizer, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text (at most `max_length`; an empty text gives [UNK])."""
    unk = tokenizer.token_to_id(UNK)
    return [encoding.ids[:max_length] or [unk] for encoding in tokenizer.encode_batch(list(texts))]


def parse_char_ngrams(spec: str) -> tuple[int, int]:
    """'2-5' -> (2, 5); '0' -> (0, 0): no character n-grams. Raises ValueError otherwise."""
    if spec.strip() == "0":
        return 0, 0
    low, sep, high = spec.partition("-")
    lo, hi = int(low), int(high if sep else low)
    if not 1 <= lo <= hi:
        raise ValueError(spec)
    return lo, hi


def char_ngrams(text: str, low: int, high: int) -> list[str]:
    """The character n-grams (low <= n <= high) of each whitespace-separated word padded with a space at each
    end; a padded word not longer than n counts once, whole (scikit-learn's `char_wb` analyzer)."""
    grams = []
    for word in text.split():
        padded = f" {word} "
        for n in range(low, high + 1):
            if len(padded) <= n:
                grams.append(padded)
                break
            grams.extend(padded[i:i + n] for i in range(len(padded) - n + 1))
    return grams


def _slot(gram: str, buckets: int) -> int:
    return zlib.crc32(gram.encode("utf-8")) % buckets


class NgramFeatures:
    """Feature ids of a text: BPE tokens [0, V), word bigrams [V, V+B), character n-grams [V+B, V+2B)."""

    def __init__(self, tokenizer: Tokenizer, buckets: int, char_ngrams: tuple[int, int]):
        self.tokenizer, self.buckets, self.char_ngrams = tokenizer, buckets, char_ngrams
        self.vocab_size = tokenizer.get_vocab_size()
        self._word_cache: dict[str, list[int]] = {}

    def __getstate__(self) -> dict:
        # The per-word cache is left out of pickles: `datasets` hashes the tokenize function (and so this
        # object) to find a cached map result, and the cache's contents must not change that hash.
        return {k: v for k, v in self.__dict__.items() if k != "_word_cache"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._word_cache = {}

    @property
    def num_features(self) -> int:
        """Rows of the model's weight table."""
        return self.vocab_size + 2 * self.buckets

    @property
    def char_start(self) -> int:
        """The first character n-gram id: ids below are word features (tokens, bigrams)."""
        return self.vocab_size + self.buckets

    def _word_ngram_ids(self, word: str) -> list[int]:
        """The character n-gram ids of one whitespace-separated word, computed once per distinct word.

        Words repeat (a corpus has far fewer distinct words than occurrences), so the hashing is
        cached per word, up to WORD_CACHE_LIMIT words; the ids are the same as without the cache.
        """
        ids = self._word_cache.get(word)
        if ids is None:
            low, high = self.char_ngrams
            base = self.vocab_size + self.buckets
            ids = [base + _slot(gram, self.buckets) for gram in char_ngrams(word, low, high)]
            if len(self._word_cache) < WORD_CACHE_LIMIT:
                self._word_cache[word] = ids
        return ids

    def _hashed(self, text: str) -> list[int]:
        normalized = self.tokenizer.normalizer.normalize_str(text)
        words = [word for word, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
        bigram_base = self.vocab_size
        ids = [bigram_base + _slot(f"{a} {b}", self.buckets) for a, b in zip(words, words[1:])]
        if self.char_ngrams[0]:
            for word in normalized.split():
                ids.extend(self._word_ngram_ids(word))
        return ids

    def __call__(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        """{"input_ids": distinct feature ids of each text (ascending), "counts": how often each occurs}."""
        ids, counts = [], []
        for tokens, text in zip(token_ids(self.tokenizer, texts), texts):
            keys, tally = np.unique(np.array(tokens + self._hashed(text), dtype=np.int64), return_counts=True)
            ids.append(keys.tolist())  # ascending
            counts.append(tally.tolist())
        return {"input_ids": ids, "counts": counts}


def inverse_document_frequency(feature_ids: Iterable[Sequence[int]], num_features: int) -> np.ndarray:
    """Smoothed IDF of every feature over the training samples: ln((1 + n) / (1 + df)) + 1 (scikit-learn's),
    and 0 for a feature no training sample has. `feature_ids`: each sample's distinct ids, or a prepared
    dataset with an `input_ids` column.

    The 0 makes an n-gram first met after training weigh nothing, as in scikit-learn's vectorizers, whose
    vocabulary comes from the training split. Given the largest IDF instead, such n-grams would take most of
    a short text's L2 norm and shrink the weights of the n-grams the model knows (measured: -2.6 points of
    accuracy with logistic regression on the 460-text dpkg set, bench/RESULTS.md).
    """
    n, df = 0, np.zeros(num_features, dtype=np.int64)
    if hasattr(feature_ids, "with_format"):  # a prepared datasets.Dataset: counted in Arrow batches, no Python lists
        import pyarrow.compute as pc

        for batch in feature_ids.with_format("arrow").iter(batch_size=65536):
            ids = pc.list_flatten(batch["input_ids"]).to_numpy()
            df += np.bincount(ids, minlength=num_features)  # ids are distinct within a sample
            n += batch.num_rows
    else:
        for ids in feature_ids:
            df[np.asarray(ids, dtype=np.int64)] += 1  # ids are distinct within a sample
            n += 1
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    return np.where(df > 0, idf, 0.0).astype(np.float32)
