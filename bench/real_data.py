"""Build small real datasets from files already on a Linux machine, and score classic baselines on them.

    python bench/real_data.py man OUT/man            # man-page descriptions -> section
    python bench/real_data.py docstrings OUT/doc     # stdlib docstrings -> top-level package
    python bench/real_data.py dpkg OUT/dpkg          # installed Debian packages' one-line descriptions -> section
    python bench/real_data.py debtags OUT/debtags    # multi-label: Debian archive descriptions -> their debtags
    python bench/real_data.py icons OUT/icons        # Adwaita icons -> context (actions, status, ...)
    python bench/real_data.py digits OUT/digits      # scikit-learn's bundled handwritten digits as PNG files
    python bench/real_data.py linear OUT/man         # TF-IDF baselines on OUT/man/{train,valid}.csv
    python bench/real_data.py heldout OUT/debtags --run RUN  # multi-label: thresholds fitted on one half of
                                                     # valid, scored on the other, for RUN and one-vs-rest LR

Text sets are written as train.csv / valid.csv (columns text, label; a stratified
80/20 split with seed 0, texts deduplicated and a text seen under two labels
dropped); image sets as train/<class>/*.png and valid/<class>/*.png (icons split by
icon name so no icon is in both; digits 80/20 per class). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import ast
import csv
import gzip
import random
import re
import shutil
import sys
import sysconfig
import time
from collections import Counter, defaultdict
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
ICON_ROOT = Path("/usr/share/icons/Adwaita")
MIN_PER_CLASS = 30


def write_csvs(out: Path, train: list[tuple[str, str]], valid: list[tuple[str, str]]) -> None:
    """out/train.csv and out/valid.csv, columns text and label."""
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("valid", valid)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(split)


def write_split(rows: list[tuple[str, str]], out: Path, per_class: int, seed: int = 0) -> None:
    """Deduplicate, drop ambiguous texts, cap each class at `per_class` (random), split 80/20 per class."""
    labels_of = defaultdict(set)
    for text, label in rows:
        labels_of[text].add(label)
    by_class = defaultdict(list)
    for text, labels in labels_of.items():
        if len(labels) == 1:
            by_class[next(iter(labels))].append(text)
    rng = random.Random(seed)
    train, valid = [], []
    for label in sorted(by_class):
        texts = sorted(by_class[label])
        if len(texts) < MIN_PER_CLASS:
            continue
        rng.shuffle(texts)
        texts = texts[:per_class]
        cut = round(0.8 * len(texts))
        train += [(t, label) for t in texts[:cut]]
        valid += [(t, label) for t in texts[cut:]]
    rng.shuffle(train)
    rng.shuffle(valid)
    write_csvs(out, train, valid)
    counts = Counter(label for _, label in train + valid)
    print(f"{out}: {len(train)} train, {len(valid)} valid, {len(counts)} classes: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def _roff_to_text(line: str) -> str:
    line = re.sub(r"\\f[BIRPH]|\\f\(..|\\f\[[^]]*\]", "", line)
    line = line.replace("\\-", "-").replace("\\(em", "-").replace("\\(en", "-").replace("\\&", "")
    line = re.sub(r"\\[(*]\S\S?|\\.", "", line)
    return re.sub(r"\s+", " ", line).strip()


def man_description(path: Path) -> str | None:
    """The description after 'name \\- ' in a man page's NAME section, or None."""
    try:
        with gzip.open(path, "rt", errors="replace") if path.suffix == ".gz" else open(path, errors="replace") as f:
            lines = f.read(20000).splitlines()
    except (OSError, EOFError):
        return None
    for i, line in enumerate(lines):
        if re.match(r'^\.S[Hh]\s+"?(NAME|Name)"?\s*$', line):
            body = []
            for nxt in lines[i + 1:i + 8]:
                if nxt.startswith(".SH") or nxt.startswith(".SS"):
                    break
                if nxt.startswith(".") and not nxt.startswith((".B ", ".I ", ".BR ", ".IR ")):
                    continue
                body.append(nxt.split(" ", 1)[1] if nxt.startswith(".") else nxt)
            text = _roff_to_text(" ".join(body))
            if " - " in text:
                description = text.split(" - ", 1)[1].strip()
                return description if len(description.split()) >= 2 else None
            return None
    return None


def build_man(out: Path, per_class: int) -> None:
    """Man-page descriptions (English sections man1..man8) labelled by section."""
    rows = []
    for section in sorted(MAN_ROOT.glob("man[1-8]")):
        for page in sorted(section.iterdir()):
            if page.is_symlink() or not page.is_file():
                continue
            description = man_description(page)
            if description:
                rows.append((description, f"section{section.name[3:]}"))
    write_split(rows, out, per_class)


def build_dpkg(out: Path, per_class: int, status: Path = Path("/var/lib/dpkg/status")) -> None:
    """The one-line descriptions of the installed Debian packages labelled by their section (libs, utils, ...)."""
    rows = []
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line and not line.startswith(" "))
        if "Description" in fields and "Section" in fields:
            rows.append((fields["Description"].strip(), fields["Section"].strip().split("/")[-1]))
    write_split(rows, out, per_class)


APT_PACKAGES = Path("/var/lib/apt/lists")


def archive_stanzas(lists: Path = APT_PACKAGES):
    """(package, short description, tags) of every package in the apt lists' Packages files that has debtags."""
    import subprocess

    for path in sorted(lists.glob("*_Packages*")):
        if path.suffix == ".lz4":
            text = subprocess.run(["lz4cat", str(path)], check=True, capture_output=True, text=True).stdout
        elif path.suffix == ".gz":
            text = gzip.open(path, "rt").read()
        else:
            text = path.read_text()
        for stanza in text.split("\n\n"):
            fields, last = {}, None
            for line in stanza.splitlines():
                if line.startswith((" ", "\t")) and last:
                    fields[last] += " " + line.strip()
                elif ":" in line:
                    last, value = line.split(":", 1)
                    fields[last] = value.strip()
            if "Tag" in fields and "Description" in fields:
                tags = [t.strip() for t in fields["Tag"].split(",") if t.strip()]
                yield fields.get("Package", ""), fields["Description"], tags


def build_debtags(out: Path, labels: int = 30, seed: int = 0) -> None:
    """Multi-label: each package's one-line description -> its debtags among the `labels` most frequent (the
    Debian archive's own metadata: several tags per package). Packages left without one of those tags are
    dropped, as are descriptions shared by packages with different tag sets; a random 80/20 split (seed 0).
    train.csv / valid.csv: text, labels (the tags joined by ',')."""
    rows = {}
    conflicting = set()
    stanzas = list(archive_stanzas())
    counts = Counter(tag for _, _, tags in stanzas for tag in set(tags))
    kept = {tag for tag, _ in counts.most_common(labels)}
    for _, text, tags in stanzas:
        chosen = tuple(sorted(set(tags) & kept))
        if not chosen:
            continue
        if rows.get(text, chosen) != chosen:
            conflicting.add(text)
        rows[text] = chosen
    items = sorted((text, ",".join(tags)) for text, tags in rows.items() if text not in conflicting)
    random.Random(seed).shuffle(items)
    cut = int(0.8 * len(items))
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", items[:cut]), ("valid", items[cut:])):
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "labels"])
            writer.writerows(split)
    per_item = sum(len(tags.split(",")) for _, tags in items) / max(len(items), 1)
    print(f"{len(stanzas)} tagged packages -> {len(items)} descriptions ({len(conflicting)} ambiguous dropped), "
          f"{len(kept)} tags, {per_item:.2f} tags per description; train {cut}, valid {len(items) - cut}")


def first_paragraph(doc: str) -> str:
    """The docstring's first paragraph, on one line."""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return re.sub(r"\s+", " ", paragraph).strip()


def build_docstrings(out: Path, per_class: int, packages: int) -> None:
    """First paragraphs of the docstrings of the standard library's packages, labelled by package."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for package in sorted(p for p in stdlib.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        if package.name in ("test", "idlelib", "lib2to3", "turtledemo", "site-packages", "pydoc_data"):
            continue
        for source in sorted(package.rglob("*.py")):
            if "test" in source.relative_to(stdlib).parts[1:-1] or source.name.startswith("test"):
                continue
            try:
                tree = ast.parse(source.read_text(errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        text = first_paragraph(doc)
                        if len(text.split()) >= 3:
                            rows.append((text, package.name))
    largest = {name for name, _ in Counter(label for _, label in rows).most_common(packages)}
    write_split([r for r in rows if r[1] in largest], out, per_class)


def icon_splits(sizes: tuple[str, ...]) -> dict[str, dict[str, dict[str, list[Path]]]]:
    """{context: {"train" | "valid": {icon name: its PNG files}}}: Adwaita icons by context (actions, devices, ...;
    not legacy), contexts of at least MIN_PER_CLASS icons, split 80/20 by icon name (seed 0)."""
    by_context = defaultdict(lambda: defaultdict(list))
    for size in sizes:
        for png in sorted((ICON_ROOT / size).glob("*/*.png")):
            context = png.parent.name
            if context != "legacy":
                by_context[context][png.stem].append(png)
    rng = random.Random(0)
    splits = {}
    for context, icons in sorted(by_context.items()):
        names = sorted(icons)
        if len(names) < MIN_PER_CLASS:
            continue
        rng.shuffle(names)
        cut = round(0.8 * len(names))
        splits[context] = {"train": {n: icons[n] for n in names[:cut]}, "valid": {n: icons[n] for n in names[cut:]}}
    return splits


def build_icons(out: Path, sizes: tuple[str, ...]) -> None:
    """Adwaita PNG icons labelled by context (actions, devices, ...), split 80/20 by icon name."""
    if out.exists():
        shutil.rmtree(out)
    for context, by_split in icon_splits(sizes).items():
        for split, icons in by_split.items():
            folder = out / split / context
            folder.mkdir(parents=True, exist_ok=True)
            for name in icons:
                for png in icons[name]:
                    shutil.copyfile(png, folder / f"{name}-{png.parts[-3]}.png")
    for split in ("train", "valid"):
        counts = {d.name: len(list(d.iterdir())) for d in sorted((out / split).iterdir())}
        print(f"{out / split}: {sum(counts.values())} images: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def build_digits(out: Path) -> None:
    """The 1,797 8x8 scans of scikit-learn's bundled digits (UCI), written as 8-bit grey PNGs, 80/20 per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(0)
    if out.exists():
        shutil.rmtree(out)
    for label in range(10):
        indices = [i for i in range(len(digits.target)) if digits.target[i] == label]
        rng.shuffle(indices)
        cut = round(0.8 * len(indices))
        for split, chosen in (("train", indices[:cut]), ("valid", indices[cut:])):
            folder = out / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    for split in ("train", "valid"):
        print(f"{out / split}: {sum(1 for _ in (out / split).glob('*/*.png'))} images, 10 classes")


def linear_baselines(folder: Path) -> None:
    """Accuracy and macro F1 of classic linear text models on folder/train.csv -> folder/valid.csv."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    def read(name):
        with open(folder / name, newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], [r["label"] for r in rows]

    train_x, train_y = read("train.csv")
    valid_x, valid_y = read("valid.csv")
    def word_and_char():  # the n-gram model's features: word 1-2-grams and char_wb 2-5-grams, each block unit length
        return make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))

    models = {
        "tfidf word 1-gram + LR": make_pipeline(TfidfVectorizer(), LogisticRegression(max_iter=2000)),
        "tfidf word 1-2-gram sublinear + LR (--baseline)": make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=2000)),
        "tfidf char_wb 2-5-gram sublinear + LinearSVC": make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True), LinearSVC()),
        "tfidf word 1-2 + char_wb 2-5 + LR (C=100)": make_pipeline(
            word_and_char(), LogisticRegression(C=100, max_iter=5000)),
        "tfidf word 1-2 + char_wb 2-5 + LinearSVC": make_pipeline(word_and_char(), LinearSVC()),
    }
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(train_x, train_y)
        predicted = model.predict(valid_x)
        print(f"{name:50s} accuracy {accuracy_score(valid_y, predicted):.4f}  "
              f"macro F1 {f1_score(valid_y, predicted, average='macro'):.4f}  "
              f"({time.perf_counter() - start:.1f} s)")


def heldout_thresholds(folder: Path, run: Path, seed: int = 0) -> None:
    """Multi-label, measured without the optimism of thresholds fitted on the split they score: RUN's
    probabilities of OUT/valid.csv (its predictions.csv from `--do_predict --test_file OUT/valid.csv`) and those
    of TF-IDF + one-vs-rest logistic regression fitted on OUT/train.csv; the evaluation split cut in two halves
    (seed 0); micro and macro F1 on the second half at 0.5 and at the thresholds of best F1 on the first."""
    import numpy as np
    from sklearn.metrics import f1_score

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from framework.evaluate.baseline import tfidf_logistic_regression
    from framework.evaluate.thresholds import fit_thresholds

    def read(path: Path) -> tuple[list[str], list[list[str]]]:
        rows = list(csv.DictReader(open(path)))
        return [r["text"] for r in rows], [r["labels"].split(",") for r in rows]

    predictions = list(csv.DictReader(open(run / "predictions.csv")))
    names = [k[len("prob_"):] for k in predictions[0] if k.startswith("prob_")]
    texts, sets = read(folder / "valid.csv")
    truth = np.array([[name in row for name in names] for row in sets], dtype=np.int8)
    model_p = np.array([[float(r[f"prob_{n}"]) for n in names] for r in predictions])
    train_texts, train_sets = read(folder / "train.csv")
    baseline = tfidf_logistic_regression(multi_label=True)
    baseline.fit(train_texts, np.array([[name in row for name in names] for row in train_sets], dtype=np.int8))
    baseline_p = baseline.predict_proba(texts)
    order = np.random.default_rng(seed).permutation(len(texts))
    fit, score = order[: len(order) // 2], order[len(order) // 2:]
    print(f"{len(texts)} evaluation texts, {len(names)} labels; thresholds fitted on {len(fit)}, scored on "
          f"{len(score)}")
    print("| model | micro F1 at 0.5 | micro F1, held-out thresholds | macro F1 at 0.5 | macro F1, held-out "
          "thresholds |\n|---|---|---|---|---|")
    for label, p in (("framework (RUN)", model_p), ("TF-IDF + one-vs-rest LR", baseline_p)):
        cut = fit_thresholds(p[fit], truth[fit])
        at_half, tuned = (p[score] >= 0.5).astype(int), (p[score] >= cut).astype(int)
        f1 = lambda y, average: f1_score(truth[score], y, average=average, zero_division=0)  # noqa: E731
        print(f"| {label} | {f1(at_half, 'micro'):.4f} | {f1(tuned, 'micro'):.4f} | {f1(at_half, 'macro'):.4f} | "
              f"{f1(tuned, 'macro'):.4f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["man", "docstrings", "dpkg", "debtags", "icons", "digits", "linear",
                                         "heldout"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per_class", type=int, default=800, help="cap on the texts kept per class")
    parser.add_argument("--packages", type=int, default=8, help="docstrings: the largest packages kept")
    parser.add_argument("--labels", type=int, default=30, help="debtags: the most frequent tags kept")
    parser.add_argument("--run", type=Path, help="heldout: a run whose predictions.csv covers OUT/valid.csv")
    args = parser.parse_args(argv)
    if args.what == "man":
        build_man(args.out, args.per_class)
    elif args.what == "docstrings":
        build_docstrings(args.out, args.per_class, args.packages)
    elif args.what == "dpkg":
        build_dpkg(args.out, args.per_class)
    elif args.what == "debtags":
        build_debtags(args.out, args.labels)
    elif args.what == "icons":
        build_icons(args.out, ("32x32", "48x48"))
    elif args.what == "digits":
        build_digits(args.out)
    elif args.what == "heldout":
        heldout_thresholds(args.out, args.run)
    else:
        linear_baselines(args.out)


if __name__ == "__main__":
    sys.exit(main())
