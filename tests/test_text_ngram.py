"""The text recipe's default model: `tokenizers` BPE, hashed n-gram features, the TF-IDF linear classifier.

References are independent of the code under test: scikit-learn's char_wb analyzer and
TfidfTransformer, transformers' tokenizer loading, and the plain 1-process run for
accumulation and resume.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

from framework.core.errors import run_main

from helpers import REPO, TEXT, max_abs_diff, read_json, run_script_in_group, weights
from text.features import (
    NgramFeatures,
    char_ngrams,
    inverse_document_frequency,
    parse_char_ngrams,
    texts_idf,
    train_tokenizer,
)
from text.models import NgramClassifier

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Return the value of x; raise ValueError if x < 0.",
          "a b", "Ünïcode ﬁne text, with ligature", "os.path.join(a, b) joins paths", "fox fox fox dog"]


def test_character_ngrams_are_scikit_learns_char_wb():
    from sklearn.feature_extraction.text import CountVectorizer

    for low, high in ((2, 5), (1, 3), (4, 4)):
        analyzer = CountVectorizer(analyzer="char_wb", ngram_range=(low, high), lowercase=False).build_analyzer()
        for text in CORPUS:
            assert sorted(char_ngrams(text, low, high)) == sorted(analyzer(text))


def test_tfidf_weighting_matches_scikit_learn():
    """The model's logits are scikit-learn's union of two sublinear TF-IDF vectorizers (word features, character
    n-grams; each L2-normalized, vocabulary from the training texts) times its table, on texts with n-grams never
    seen in training too (they weigh nothing)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    train_texts, texts = CORPUS[:4], CORPUS + ["§¤ ¤§", "fox §¤", "fox"]
    features = NgramFeatures(train_tokenizer(train_texts, 200), 2**16, (2, 4))
    train, encoded = features(train_texts), features(texts)

    def block(is_chars):  # each text as its list of feature ids of one block, repeated count times
        def analyzer(sample):
            return [str(i) for i, c in zip(*sample) if (i >= features.char_start) == is_chars for _ in range(c)]
        return TfidfVectorizer(analyzer=analyzer, sublinear_tf=True)

    union = make_union(block(False), block(True)).fit(list(zip(train["input_ids"], train["counts"])))
    expected = union.transform(list(zip(encoded["input_ids"], encoded["counts"]))).toarray()
    vocabulary = [int(name.split("__")[1]) for name in union.get_feature_names_out()]

    idf = inverse_document_frequency(train["input_ids"], features.num_features)
    assert np.array_equal(texts_idf(features, train_texts, batch=3), idf)  # --streaming's batched count: the same
    model = NgramClassifier(features.num_features, 3, idf, char_start=features.char_start)
    table = torch.randn(features.num_features, 3)
    table[0] = 0.0  # the padding row (never a feature)
    bias = torch.tensor([0.5, -1.0, 2.0])
    with torch.no_grad():
        model.table.weight.copy_(table)
        model.bias.copy_(bias)
    longest = max(len(ids) for ids in encoded["input_ids"])
    ids = torch.zeros(len(texts), longest, dtype=torch.long)
    count = torch.zeros_like(ids)
    for i, (row_ids, row_counts) in enumerate(zip(encoded["input_ids"], encoded["counts"])):
        ids[i, :len(row_ids)], count[i, :len(row_counts)] = torch.tensor(row_ids), torch.tensor(row_counts)
    with torch.no_grad():
        logits = model(ids, count).numpy()
    reference = expected @ table[vocabulary].numpy() + bias.numpy()
    np.testing.assert_allclose(logits, reference, rtol=1e-5, atol=1e-5)
    assert any(c > 1 for c in encoded["counts"][5])  # repeated words: the sublinear tf is exercised
    assert np.allclose(logits[6], bias.numpy())  # nothing known: the bias alone
    np.testing.assert_allclose(logits[7], logits[8], rtol=1e-6)  # unseen n-grams leave the known ones alone


def test_features_are_the_same_in_another_process():
    """Hash slots must not depend on the process (Python's str hash does: PYTHONHASHSEED)."""
    here = NgramFeatures(train_tokenizer(CORPUS, 200), 1000, (2, 5))(CORPUS)
    import json

    code = ("import json, sys; from text.features import NgramFeatures, train_tokenizer;"
            f"corpus = json.loads({json.dumps(CORPUS)!r});"
            "print(json.dumps(NgramFeatures(train_tokenizer(corpus, 200), 1000, (2, 5))(corpus)))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO / "recipes", capture_output=True, text=True,
                             check=True, env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == here


def test_the_saved_tokenizer_loads_in_tokenizers_and_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    tokenizer = train_tokenizer(CORPUS, 200)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in CORPUS:
        assert again.encode(text).ids == tokenizer.encode(text).ids == fast(text)["input_ids"]
    assert tokenizer.token_to_id("[PAD]") == 0


@pytest.mark.parametrize("spec,expected", [("2-5", (2, 5)), ("3", (3, 3)), ("0", (0, 0))])
def test_char_ngram_ranges(spec, expected):
    assert parse_char_ngrams(spec) == expected


@pytest.mark.parametrize("argv,message", [
    (["--model", "lstm"], "error: --model must be ngram or transformer, got 'lstm'"),
    (["--char_ngrams", "5-2"], "error: --char_ngrams must be a range like 2-5 (lengths >= 1), one length like 3, "
                               "or 0 for none, got '5-2'"),
])
def test_bad_text_model_flags_are_refused(tmp_path, capsys, argv, message):
    from recipes import text_classification

    code = run_main(lambda: text_classification.main(["--train_file", "x.csv", "--output_dir", str(tmp_path / "o"),
                                                      *argv]))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_gradient_checkpointing_is_a_noted_no_op_for_the_ngram_model(tmp_path, capsys, text_files):
    from recipes import text_classification

    args = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--max_steps", "3", "--baseline", "false", "--mixed_precision", "no"]
    assert run_main(lambda: text_classification.main([*args, "--output_dir", str(tmp_path / "plain")])) == 0
    assert run_main(lambda: text_classification.main([*args, "--output_dir", str(tmp_path / "ckpt"),
                                                      "--gradient_checkpointing", "true"])) == 0
    assert "note: --gradient_checkpointing: NgramClassifier has no blocks to checkpoint" in capsys.readouterr().out
    assert max_abs_diff(tmp_path / "plain", tmp_path / "ckpt") == 0.0


def test_defaults_follow_the_model_and_a_given_flag_wins():
    from framework.core.config import parse_config, validate_config
    from recipes.text_classification import TextConfig

    ngram = parse_config(TextConfig, ["--train_file", "x.csv"])
    transformer = parse_config(TextConfig, ["--train_file", "x.csv", "--model", "transformer"])
    given = parse_config(TextConfig, ["--train_file", "x.csv", "--learning_rate", "0.3", "--num_train_epochs", "2",
                                      "--optim", "adamw"])
    assert (ngram.optim, ngram.momentum, ngram.learning_rate, ngram.num_train_epochs) == ("sgd", 0.0, 25.0, 20)
    assert (transformer.optim, transformer.momentum, transformer.learning_rate, transformer.num_train_epochs) == \
        ("adamw", 0.9, 1e-3, 5)
    assert (given.optim, given.learning_rate, given.num_train_epochs) == ("adamw", 0.3, 2)
    # --model_path adopts the trained run's --model before the runner validates: the defaults follow it
    adopted = parse_config(TextConfig, ["--train_file", "x.csv"], validate=False)
    adopted.model = "transformer"
    validate_config(adopted)  # fills the defaults of the model that runs, then checks
    assert (adopted.optim, adopted.learning_rate, adopted.num_train_epochs) == ("adamw", 1e-3, 5)


EXACT = ["--max_steps", "12", "--mixed_precision", "no", "--baseline", "false", "--seed", "3", "--logging_steps", "1"]


@pytest.mark.slow
def test_ngram_accumulation_on_two_processes_equals_the_big_batch(tmp_path, text_files):
    from recipes import text_classification

    data = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv")]
    run_script_in_group(TEXT, *data, *EXACT, "--per_device_train_batch_size", "4", "--gradient_accumulation_steps",
                        "4", "--output_dir", str(tmp_path / "two"))  # a forked 2-process gloo group
    assert run_main(lambda: text_classification.main([*data, *EXACT, "--per_device_train_batch_size", "32",
                                                      "--output_dir", str(tmp_path / "one")])) == 0
    assert read_json(tmp_path / "two" / "summary.json")["world_size"] == 2
    assert max_abs_diff(tmp_path / "one", tmp_path / "two") <= 1e-5
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "two" / "tokenizer.json").read_bytes()


def test_ngram_run_resumes_bitwise(tmp_path, text_files):
    from recipes import text_classification

    args = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            *EXACT, "--checkpointing_steps", "6", "--per_device_train_batch_size", "8"]
    assert run_main(lambda: text_classification.main([*args, "--output_dir", str(tmp_path / "full")])) == 0
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_6", tmp_path / "resumed" / "checkpoints" / "step_6")
    assert run_main(lambda: text_classification.main([*args, "--output_dir", str(tmp_path / "resumed"),
                                                      "--resume_from_checkpoint", "latest"])) == 0
    a, b = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    assert a.keys() == {"table.weight", "bias", "idf", "char_start"} and all(a[k].equal(b[k]) for k in a)
    assert "optim: sgd" in (tmp_path / "full" / "config.yaml").read_text()  # momentum buffers resumed too
    assert read_json(tmp_path / "full" / "report.json") == read_json(tmp_path / "resumed" / "report.json")


REAL_SETS = {  # bench/real_data.py sets built from this machine's files: (arguments, fewest training texts)
    "docstrings": (["--packages", "10", "--per_class", "700"], 1000),
    "dpkg": (["--per_class", "1000"], 300),  # tiny: where the first default (AdamW) was 6 points behind
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(REAL_SETS))
def test_default_model_beats_the_baseline_on_real_text(tmp_path, kind):
    """Real text from this machine (the standard library's docstrings by package; the installed Debian packages'
    descriptions by section): the default recipe must beat its TF-IDF + logistic regression baseline and stay
    near the best linear model, computed here."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    from recipes import text_classification

    if kind == "dpkg" and not os.path.isfile("/var/lib/dpkg/status"):
        pytest.skip("not a Debian-based system: no /var/lib/dpkg/status to build the set from")
    arguments, fewest = REAL_SETS[kind]
    data = tmp_path / kind
    build = subprocess.run([sys.executable, str(REPO / "bench" / "real_data.py"), kind, str(data), *arguments],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    assert run_main(lambda: text_classification.main(["--train_file", str(data / "train.csv"), "--validation_file",
                                                      str(data / "valid.csv"), "--output_dir", str(tmp_path / "o")]))\
        == 0
    summary = read_json(tmp_path / "o" / "summary.json")
    import csv

    def read(name):
        with open(data / name, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    (train_x, train_y), (valid_x, valid_y) = read("train.csv"), read("valid.csv")
    assert len(train_x) > fewest and len(set(train_y)) >= 5
    best_linear = make_pipeline(make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                           TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
                                LinearSVC()).fit(train_x, train_y).score(valid_x, valid_y)
    assert summary["eval_accuracy"] > summary["baseline_accuracy"]
    assert summary["eval_accuracy"] >= best_linear - 0.02, (summary["eval_accuracy"], best_linear)


# Texts that take every path of the batched features: special tokens' text, the four control characters that
# str.split() splits at and the pre-tokenizer does not, the batch separator itself, NFKC ligatures, combining marks,
# non-ASCII words, long words, texts without any word, tabs and newlines, punctuation runs.
AWKWARD = ["", " ", "\t\n", "...", "use [UNK] and [PAD] here", "[unk] lower", "a\x1fb c\x1c.d", "ab\u2029cd ef",
           "Ünïcode ﬁne ΣΑΣ text", "e\u0301 combining", "x" * 300 + " y", "a.b,c;d (e) [f]", "\u00a0nbsp\u2003em",
           "日本語の テキスト です", "emoji 😀😀 ok", "²³ ½ Ⅻ", "under_score __x__ x", "tab\tsep\nnew line",
           "\u200bzero\u200bwidth"]


def reference_feature_ids(features: NgramFeatures, text: str) -> list[int]:
    """The features' definition, text by text, from strings: the tokenizer's own encoding (or [UNK]), CRC-32 of
    every 'a b' pair of pre-tokenizer words, CRC-32 of every char_wb n-gram of the normalized text."""
    tokenizer = features.tokenizer
    normalized = tokenizer.normalizer.normalize_str(text)
    words = [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]
    ids = tokenizer.encode(text).ids or [tokenizer.token_to_id("[UNK]")]
    ids += [features.vocab_size + zlib.crc32(f"{a} {b}".encode()) % features.buckets for a, b in zip(words, words[1:])]
    low, high = features.char_ngrams
    if low:
        ids += [features.char_start + zlib.crc32(g.encode()) % features.buckets for g in char_ngrams(normalized, low, high)]
    return ids


@pytest.mark.parametrize("buckets, grams, cache_limit", [(2**18, (2, 5), None), (1000, (1, 3), 40), (97, (0, 0), None)])
def test_batched_features_are_the_text_by_text_definition(monkeypatch, buckets, grams, cache_limit):
    """The batched path (per-word tables, CRCs of joined words computed from the words' own CRCs) gives, for
    every text, the distinct ids and counts of the definition; also when the word cache restarts mid-batch,
    for texts repeated in one batch and across batches, and its contents do not enter datasets' hash."""
    from datasets.fingerprint import Hasher

    from text import features as module

    if cache_limit:
        monkeypatch.setattr(module, "WORD_CACHE_LIMIT", cache_limit)
    texts = AWKWARD + CORPUS + [f"{a} {b}" for a in CORPUS for b in AWKWARD[4:9]] + AWKWARD
    features = NgramFeatures(train_tokenizer(CORPUS + AWKWARD, 300), buckets, grams)
    before = Hasher.hash(features)
    got = features(texts[:40]), features(texts[40:])
    assert Hasher.hash(features) == before and len(features._words) > 0
    ids = got[0]["input_ids"] + got[1]["input_ids"]
    counts = got[0]["counts"] + got[1]["counts"]
    for sample, row_ids, row_counts in zip(texts, ids, counts):
        expected, times = np.unique(np.array(reference_feature_ids(features, sample), dtype=np.int64),
                                    return_counts=True)
        assert (row_ids, row_counts) == (expected.tolist(), times.tolist()), sample


def test_the_crc_of_joined_words_is_computed_from_their_parts():
    """crc(a + ' ' + b) from crc(a), crc(' ' + b) and its byte length, for lengths of every bit pattern to 2**12."""
    from text.features import _crc_shift

    rng = np.random.default_rng(0)
    lefts = [bytes(rng.integers(0, 256, rng.integers(0, 9))) for _ in range(300)]
    rights = [b" " + bytes(rng.integers(0, 256, n)) for n in list(range(0, 70)) + [127, 128, 255, 1000, 4095] * 46]
    crcs = _crc_shift().shift(np.array([zlib.crc32(a) for a in lefts], dtype=np.uint64),
                              np.array([len(b) for b in rights])) ^ np.array([zlib.crc32(b) for b in rights], np.uint64)
    assert crcs.tolist() == [zlib.crc32(a + b) for a, b in zip(lefts, rights)]


def test_str_split_and_the_pre_tokenizer_agree_on_whitespace():
    """The batched features rest on this: every character str.split() splits at is one the pre-tokenizer also
    splits at, except the four the features send text by text."""
    from text.features import _SPLIT_BY_PYTHON_ONLY

    pre = train_tokenizer(CORPUS, 100).pre_tokenizer
    differ = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and chr(c).isspace()
              and [w for w, _ in pre.pre_tokenize_str(f"a{chr(c)}.{chr(c)}b")] != ["a", ".", "b"]]
    assert differ == list(_SPLIT_BY_PYTHON_ONLY)


def test_sparse_steps_train_what_dense_steps_train():
    """The default n-gram step updates only the rows its batch touches (a sparse gradient): against the dense
    table, under SGD, clipping that bites and two micro-batches accumulated per step, the weights agree, untouched
    rows stay exactly zero, and momentum or weight decay (which move every row) keep the dense table."""
    from framework.core.config import parse_config
    from framework.train.sparse import clip_grad_norm_, sparse_updates_apply
    from recipes.text_classification import TextConfig

    features = NgramFeatures(train_tokenizer(CORPUS, 200), 5000, (2, 5))
    encoded = features(CORPUS)
    idf = inverse_document_frequency(encoded["input_ids"], features.num_features)
    from datasets import Dataset  # the recipe's path: the prepared split's Arrow column, counted in batches
    assert np.array_equal(inverse_document_frequency(Dataset.from_dict(encoded), features.num_features), idf)
    width = max(len(ids) for ids in encoded["input_ids"])
    ids = torch.tensor([row + [0] * (width - len(row)) for row in encoded["input_ids"]])
    counts = torch.tensor([row + [0] * (width - len(row)) for row in encoded["counts"]])
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    models = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        model = NgramClassifier(features.num_features, 3, idf, char_start=features.char_start, sparse=sparse)
        optimizer = torch.optim.SGD(model.parameters(), lr=3.0, momentum=0.0)
        norms = []
        for step in range(8):
            for half in (slice(0, 3), slice(3, 6)):  # two micro-batches, one optimizer step
                rows = torch.roll(torch.arange(6), step)[half]
                loss = torch.nn.functional.cross_entropy(model(ids[rows], counts[rows]), labels[rows],
                                                         reduction="sum") / 6
                loss.backward()
            assert model.table.weight.grad.is_sparse == sparse
            norms.append(float(clip_grad_norm_(model.parameters(), 0.2)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        models[sparse] = (model, norms)
    (dense, dense_norms), (sparse, sparse_norms) = models[False], models[True]
    assert np.allclose(dense_norms, sparse_norms, rtol=1e-5) and max(dense_norms) > 0.2  # clipping did bite
    assert max_abs_diff_tensors(dense.table.weight, sparse.table.weight) <= 1e-6
    assert max_abs_diff_tensors(dense.bias, sparse.bias) <= 1e-6
    touched = torch.zeros(features.num_features, dtype=torch.bool)
    touched[ids[counts > 0]] = True
    assert sparse.table.weight[~touched].count_nonzero() == 0 and sparse.table.weight[touched].abs().sum() > 0
    given = lambda *flags: parse_config(TextConfig, ["--train_file", "x.csv", *flags])  # noqa: E731
    assert sparse_updates_apply(given())
    assert not sparse_updates_apply(given("--momentum", "0.9"))
    assert not sparse_updates_apply(given("--weight_decay", "0.01"))
    assert not sparse_updates_apply(given("--optim", "adamw"))


def max_abs_diff_tensors(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())
