"""Text to model inputs: a `tokenizers` tokenizer trained on the training split, and hashed n-gram features.

`train_tokenizer` fits a byte-pair-encoding (BPE) tokenizer (NFKC, lower case, words
and runs of punctuation) on the training texts without a download; it is saved as
tokenizer.json, which `tokenizers.Tokenizer.from_file` and transformers'
`PreTrainedTokenizerFast(tokenizer_file=...)` both load. Every process trains its own
(or loads it from the preparation cache) and must get the same one: tokenizers' BPE
trainer is deterministic (its WordPiece trainer is not: the vocabulary changes from run
to run, measured with tokenizers 0.23), and the recipe runner compares the processes'
fingerprints.

`NgramFeatures` turns a text into the features of the n-gram model: its BPE
tokens, its word bigrams and the character n-grams of its words (padded with a
space at each end, as scikit-learn's `char_wb`), the latter two hashed into
`buckets` slots each. Hashing uses CRC-32, so every process and every later run
maps an n-gram to the same slot (Python's `hash` of a string differs per process).
A sample is its distinct feature ids with their counts; the model weighs them. The
word features (tokens and bigrams) and the character n-grams are two blocks, each
scaled to unit norm by the model, as a scikit-learn union of two TF-IDF vectorizers.

How it stays fast (a million texts in seconds, not minutes): the pre-tokenizer's words never
cross whitespace, so a text's tokens, bigrams and character n-grams are those of its
whitespace-separated words plus one bigram where two words meet. Each distinct word is worked
out once (`NgramFeatures.reference_ids` does the same text by text, and is the definition the
tests hold the fast path to); a batch is then a few numpy gathers, and the bigram that joins two
words is hashed from the two words' own CRCs (CRC-32 of a concatenation is a linear function of
the parts' CRCs), so no string is built per occurrence.
"""

from __future__ import annotations

import itertools
import zlib
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0  # [PAD] is trained first: id 0 (padding; never a feature)
WORD_CACHE_LIMIT = 500_000  # distinct words kept with their feature ids (about 150 MB); the cache restarts when full
# str.split() also splits at these four control characters, which the pre-tokenizer reads as punctuation: a text
# holding one takes the text-by-text path (every other character str.split() splits at, the pre-tokenizer does too).
_SPLIT_BY_PYTHON_ONLY = "\x1c\x1d\x1e\x1f"
_BATCH_SEPARATOR = "\u2029"  # whitespace to both splitters, kept as it is by NFKC and lower case


def train_tokenizer(texts: Iterable[str | list[str]], vocab_size: int) -> Tokenizer:
    """A BPE tokenizer of at most `vocab_size` entries ([PAD]=0, [UNK]=1) learned from `texts` (strings, or
    lists of strings: batches cross into the Rust trainer with less overhead)."""
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


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


class _CrcShift:
    """`shift(crcs, lengths)`: each CRC-32 advanced over that many zero bytes, for a whole array at once.

    zlib's CRC-32 satisfies crc(a + b) = shift(crc(a), len(b)) ^ crc(b), with `shift` linear over GF(2):
    a table lookup per byte of the CRC. One table per power of two of the length; a length is the sum
    of its bits' powers, and shifts compose.
    """

    def __init__(self, bits: int = 32):
        zero = zlib.crc32(b"\0")
        basis = np.array([zlib.crc32(b"\0", 1 << j) ^ zero for j in range(32)], dtype=np.uint64)  # one byte
        self.tables = []
        for _ in range(bits):
            table = self._expand(basis)
            self.tables.append(table)
            basis = self._apply(table, self._apply(table, np.uint64(1) << np.arange(32, dtype=np.uint64)))

    @staticmethod
    def _expand(basis: np.ndarray) -> np.ndarray:
        """(4, 256): the shifted value of byte v in position k, from the shifted values of the 32 single bits."""
        values = np.arange(256, dtype=np.uint64)
        table = np.zeros((4, 256), dtype=np.uint64)
        for k in range(4):
            for bit in range(8):
                table[k] ^= np.where((values >> np.uint64(bit)) & np.uint64(1), basis[8 * k + bit], np.uint64(0))
        return table

    @staticmethod
    def _apply(table: np.ndarray, crcs: np.ndarray) -> np.ndarray:
        mask = np.uint64(255)
        return (table[0][crcs & mask] ^ table[1][(crcs >> np.uint64(8)) & mask]
                ^ table[2][(crcs >> np.uint64(16)) & mask] ^ table[3][(crcs >> np.uint64(24)) & mask])

    def shift(self, crcs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """crc advanced over `lengths` zero bytes, elementwise (lengths below 2**32)."""
        out = crcs.astype(np.uint64)
        for bit, table in enumerate(self.tables):
            chosen = ((lengths >> bit) & 1).astype(bool)
            if chosen.any():
                out[chosen] = self._apply(table, out[chosen])
            if not (lengths >> (bit + 1)).any():
                break
        return out


_SHIFT: _CrcShift | None = None


def _crc_shift() -> _CrcShift:
    global _SHIFT
    if _SHIFT is None:
        _SHIFT = _CrcShift()
    return _SHIFT


def _crc_table() -> np.ndarray:
    """zlib's CRC-32 byte table (reflected polynomial 0xEDB88320)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_BYTE_TABLE = _crc_table()


def _window_crcs(buffer: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """zlib.crc32 of buffer[s:s + width] for every s in `starts`, all at once (one table step per byte)."""
    crcs = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    for k in range(width):
        crcs = _BYTE_TABLE[(crcs ^ buffer[starts + k]) & 0xFF] ^ (crcs >> 8)
    return crcs ^ np.uint32(0xFFFFFFFF)


def _ascii_char_ngram_crcs(words: list[str], low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """CRC-32 of every character n-gram (char_ngrams' rule) of each ASCII word: (count per word, CRCs in word
    order). In ASCII a character is a byte, so the n-grams are byte windows of the padded words."""
    padded = [f" {word} ".encode("ascii") for word in words]
    lengths = np.fromiter(map(len, padded), dtype=np.int64, count=len(padded))
    buffer = np.frombuffer(b"".join(padded), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    owners, crcs = [], []
    for width in range(low, high + 1):
        per_word = np.where(lengths > width, lengths - width + 1, 0)  # windows of this width
        total = int(per_word.sum())
        if total:
            first = np.cumsum(per_word) - per_word
            positions = np.repeat(starts - first, per_word) + np.arange(total)
            crcs.append(_window_crcs(buffer, positions, width))
            owners.append(np.repeat(np.arange(len(words)), per_word))
    whole = np.flatnonzero(lengths <= high)  # a padded word not longer than the widest n-gram counts once, whole
    crcs.append(np.fromiter((zlib.crc32(padded[i]) for i in whole), dtype=np.uint32, count=len(whole)))
    owners.append(whole)
    owner = np.concatenate(owners)
    order = np.argsort(owner, kind="stable")
    return np.bincount(owner, minlength=len(words)), np.concatenate(crcs)[order]


class _WordTable:
    """What each distinct whitespace-separated word contributes, kept in flat arrays (CSR rows).

    A word's row: the feature ids that lie inside it (its BPE tokens, the bigrams of its own pre-tokenizer
    words, its character n-grams), whether it has any pre-tokenizer word at all, and the CRCs that hash
    the bigram joining it to a neighbour: crc(' ' + first word) with that string's byte length, and
    crc(last word). Arrays grow by doubling, so adding a batch's new words costs what they hold.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.values = np.empty(1 << 16, dtype=np.int64)
        self.size = 0
        self.info = np.empty((1 << 12, 6), dtype=np.int64)  # start, length, has words, first crc, its length, last crc

    def __len__(self) -> int:
        return len(self.rows)

    @staticmethod
    def _room(array: np.ndarray, needed: int) -> np.ndarray:
        if needed <= len(array):
            return array
        grown = np.empty((max(2 * len(array), needed), *array.shape[1:]), dtype=array.dtype)
        grown[:len(array)] = array
        return grown

    def add(self, words: list[str], ids: list[list[int]], edges: list[tuple[int, int, int, int]],
            char_counts: np.ndarray, char_ids: np.ndarray) -> None:
        """Append `words`: each one's word-feature ids and edge CRCs (NgramFeatures._describe), and its
        character n-gram ids (char_counts[i] of them for word i, in word order in char_ids)."""
        word_counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        word_ids = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(word_counts.sum()))
        lengths = word_counts + char_counts
        first, count, total = len(self.rows), len(words), int(lengths.sum())
        starts = self.size + np.cumsum(lengths) - lengths
        self.values = self._room(self.values, self.size + total)
        for part, counts, offset in ((word_ids, word_counts, 0), (char_ids, char_counts, word_counts)):
            before = np.cumsum(counts) - counts
            self.values[np.repeat(starts + offset - before, counts) + np.arange(len(part))] = part
        self.info = self._room(self.info, first + count)
        info = self.info[first:first + count]
        info[:, 0], info[:, 1] = starts, lengths
        info[:, 2:] = np.array(edges, dtype=np.int64).reshape(count, 4)
        self.size += total
        self.rows.update(zip(words, range(first, first + count)))

    def columns(self) -> tuple[np.ndarray, ...]:
        """starts, lengths, has_words, first_crc, first_length, last_crc: one array each, a row per word."""
        info = self.info[:len(self.rows)]
        return info[:, 0], info[:, 1], info[:, 2].astype(bool), info[:, 3], info[:, 4], info[:, 5]


def _gather(starts: np.ndarray, lengths: np.ndarray, values: np.ndarray, rows: np.ndarray,
            owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The values of CSR rows `rows`, concatenated, and the owner of each (owners[i] for row i's values)."""
    counts = lengths[rows]
    total = int(counts.sum())
    before = np.cumsum(counts) - counts
    positions = np.repeat(starts[rows] - before, counts) + np.arange(total)
    return values[positions], np.repeat(owners, counts)


class NgramFeatures:
    """Feature ids of a text: BPE tokens [0, V), word bigrams [V, V+B), character n-grams [V+B, V+2B)."""

    def __init__(self, tokenizer: Tokenizer, buckets: int, char_ngrams: tuple[int, int]):
        self.tokenizer, self.buckets, self.char_ngrams = tokenizer, buckets, char_ngrams
        self.vocab_size = tokenizer.get_vocab_size()
        self._words = _WordTable()

    def __getstate__(self) -> dict:
        # The per-word cache is left out of pickles: `datasets` hashes the tokenize function (and so this
        # object) to find a cached map result, and the cache's contents must not change that hash.
        return {k: v for k, v in self.__dict__.items() if k != "_words"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._words = _WordTable()

    @property
    def num_features(self) -> int:
        """Rows of the model's weight table."""
        return self.vocab_size + 2 * self.buckets

    @property
    def char_start(self) -> int:
        """The first character n-gram id: ids below are word features (tokens, bigrams)."""
        return self.vocab_size + self.buckets

    def _slot(self, gram: str) -> int:
        return zlib.crc32(gram.encode("utf-8")) % self.buckets

    def reference_ids(self, text: str) -> list[int]:
        """Every feature id of `text`, with repeats, worked out for this text alone: the definition of the
        features (the batched path gives the same ids; the tests hold it to this)."""
        tokens = self.tokenizer.encode(text).ids or [self.tokenizer.token_to_id(UNK)]
        normalized = self.tokenizer.normalizer.normalize_str(text)
        words = [word for word, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
        bigrams = [self.vocab_size + self._slot(f"{a} {b}") for a, b in zip(words, words[1:])]
        low, high = self.char_ngrams
        chars = [self.char_start + self._slot(g) for g in char_ngrams(normalized, low, high)] if low else []
        return tokens + bigrams + chars

    def _describe(self, word: str) -> tuple[list[int], tuple[int, int, int, int]]:
        """The word-feature ids inside one whitespace-separated word (its BPE tokens, the bigrams of its own
        pre-tokenizer words) and its edge CRCs (see _WordTable)."""
        pieces = [piece for piece, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(word)]
        ids = [token.id for piece in pieces for token in self.tokenizer.model.tokenize(piece)]
        ids += [self.vocab_size + self._slot(f"{a} {b}") for a, b in zip(pieces, pieces[1:])]
        if not pieces:
            return ids, (0, 0, 0, 0)
        first = (" " + pieces[0]).encode("utf-8")
        return ids, (1, zlib.crc32(first), len(first), _crc(pieces[-1]))

    def _add_words(self, table: _WordTable, words: list[str]) -> None:
        """Work out `words` (new to the table) and add them: ASCII words' character n-grams hashed together."""
        low, high = self.char_ngrams
        ascii_words = [w for w in words if w.isascii()]
        other = [w for w in words if not w.isascii()]
        words = ascii_words + other
        described = [self._describe(w) for w in words]
        if low:
            counts, crcs = _ascii_char_ngram_crcs(ascii_words, low, high)
            grams = [[self._slot(g) for g in char_ngrams(w, low, high)] for w in other]
            counts = np.concatenate([counts, np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))])
            slots = np.concatenate([(crcs % np.uint32(self.buckets)).astype(np.int64),
                                    np.fromiter(itertools.chain.from_iterable(grams), dtype=np.int64)])
            char_ids = self.char_start + slots
        else:
            counts, char_ids = np.zeros(len(words), dtype=np.int64), np.zeros(0, dtype=np.int64)
        table.add(words, [ids for ids, _ in described], [edge for _, edge in described], counts, char_ids)

    def _rows(self, words: list[str]) -> np.ndarray:
        """Each word's row in the word table, adding the words it lacks. A table that would pass
        WORD_CACHE_LIMIT starts again with this batch's words (all of them, however many)."""
        table = self._words
        rows = np.fromiter(map(table.rows.get, words, itertools.repeat(-1)), dtype=np.int64, count=len(words))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            new = list(dict.fromkeys(words[i] for i in missing))
            if len(table) + len(new) > WORD_CACHE_LIMIT:
                table = self._words = _WordTable()
                missing, new = np.arange(len(words)), list(dict.fromkeys(words))
            self._add_words(table, new)
            rows[missing] = [table.rows[words[i]] for i in missing]
        return rows

    def _normalized(self, texts: list[str]) -> list[str]:
        """Each text through the tokenizer's normalizer: one call for the batch where the separator allows."""
        normalize = self.tokenizer.normalizer.normalize_str
        if not any(_BATCH_SEPARATOR in text for text in texts):
            joined = normalize(_BATCH_SEPARATOR.join(texts)).split(_BATCH_SEPARATOR)
            if len(joined) == len(texts):
                return joined
        return [normalize(text) for text in texts]

    def _one_by_one(self, texts: list[str], normalized: list[str]) -> list[int]:
        """The texts the word-by-word path cannot take: those holding a special token's text (the tokenizer
        reads it as that token) or a character only str.split() splits at. Checked on the whole batch first."""
        specials = [token.content for token in self.tokenizer.get_added_tokens_decoder().values()]
        raw, norm = "\n".join(texts), "\n".join(normalized)
        if not any(s in raw for s in specials) and not any(c in norm for c in _SPLIT_BY_PYTHON_ONLY):
            return []
        return [i for i, (text, norm) in enumerate(zip(texts, normalized))
                if any(s in text for s in specials) or any(c in norm for c in _SPLIT_BY_PYTHON_ONLY)]

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's features in flat form: (offsets, ids, counts). Text i has the distinct feature ids
        ids[offsets[i]:offsets[i + 1]] (ascending) with their counts."""
        texts = list(texts)
        normalized = self._normalized(texts)
        one_by_one = self._one_by_one(texts, normalized)
        chunks = [text.split() for text in normalized]
        for i in one_by_one:
            chunks[i] = []
        per_text = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        words = list(itertools.chain.from_iterable(chunks))
        owner = np.repeat(np.arange(len(texts), dtype=np.int64), per_text)
        rows = self._rows(words)
        starts, lengths, has_words, first_crc, first_length, last_crc = self._words.columns()
        inside, inside_owner = _gather(starts, lengths, self._words.values, rows, owner)
        # The bigram where two neighbouring words of one text meet: crc(last + ' ' + first).
        joined_rows, joined_owner = rows[has_words[rows]], owner[has_words[rows]]
        same_text = joined_owner[1:] == joined_owner[:-1]
        left, right = joined_rows[:-1][same_text], joined_rows[1:][same_text]
        crcs = _crc_shift().shift(last_crc[left].astype(np.uint64), first_length[right]) ^ \
            first_crc[right].astype(np.uint64)
        between = self.vocab_size + (crcs % np.uint64(self.buckets)).astype(np.int64)
        # A text without any pre-tokenizer word encodes to no token: it gets [UNK], as token_ids does.
        has_tokens = np.zeros(len(texts), dtype=bool)
        has_tokens[joined_owner] = True
        has_tokens[one_by_one] = True
        no_words = np.flatnonzero(~has_tokens)
        unk = np.full(len(no_words), self.tokenizer.token_to_id(UNK), dtype=np.int64)
        separate = [np.asarray(self.reference_ids(texts[i]), dtype=np.int64) for i in one_by_one]
        separate_owner = np.repeat(np.asarray(one_by_one, dtype=np.int64), [len(ids) for ids in separate])
        ids = np.concatenate([inside, between, unk, *separate])
        owners = np.concatenate([inside_owner, joined_owner[1:][same_text], no_words, separate_owner])
        keys = np.sort(owners * self.num_features + ids, kind="stable")  # mostly in runs already: fast
        boundaries = np.flatnonzero(np.diff(keys, prepend=-1))
        keys, counts = keys[boundaries], np.diff(boundaries, append=len(keys))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys // self.num_features, minlength=len(texts)), out=offsets[1:])
        return offsets, keys % self.num_features, counts.astype(np.int64)

    def arrow(self, texts: Sequence[str]) -> dict:
        """{"input_ids", "counts"} as Arrow lists of int32 (what a datasets map writes without a Python list;
        feature ids fit: the table has fewer than 2**31 rows)."""
        import pyarrow as pa

        offsets, ids, counts = self.encode(texts)
        offsets = pa.array(offsets.astype(np.int32))  # int32 values: half the disk and page cache of int64
        return {"input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.astype(np.int32))),
                "counts": pa.ListArray.from_arrays(offsets, pa.array(counts.astype(np.int32)))}

    def __call__(self, texts: Sequence[str]) -> dict[str, list[list[int]]]:
        """{"input_ids": distinct feature ids of each text (ascending), "counts": how often each occurs}."""
        offsets, ids, counts = self.encode(texts)
        ids, counts = ids.tolist(), counts.tolist()
        bounds = list(zip(offsets[:-1].tolist(), offsets[1:].tolist()))
        return {"input_ids": [ids[a:b] for a, b in bounds], "counts": [counts[a:b] for a, b in bounds]}


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

        from framework import arrow_batches

        for batch in arrow_batches(feature_ids, "input_ids"):
            df += np.bincount(pc.list_flatten(batch).to_numpy(), minlength=num_features)  # distinct in a sample
            n += len(batch)
    else:
        for ids in feature_ids:
            df[np.asarray(ids, dtype=np.int64)] += 1  # ids are distinct within a sample
            n += 1
    return _smoothed_idf(n, df)


def _smoothed_idf(n: int, df: np.ndarray) -> np.ndarray:
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    return np.where(df > 0, idf, 0.0).astype(np.float32)


def texts_idf(features: NgramFeatures, texts: Sequence[str], batch: int = 10_000) -> np.ndarray:
    """`inverse_document_frequency` of the features of `texts`, counted a batch at a time from the flat ids
    (no list per text: 100,000 texts hold about 15 million ids)."""
    df = np.zeros(features.num_features, dtype=np.int64)
    for start in range(0, len(texts), batch):
        _, ids, _ = features.encode(texts[start:start + batch])
        df += np.bincount(ids, minlength=features.num_features)  # ids are distinct within a text
    return _smoothed_idf(len(texts), df)
