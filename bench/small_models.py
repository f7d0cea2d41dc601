"""Small models against a hand-written loop: the framework's own overhead where the model is cheap.

    python bench/small_models.py --workload digits --rounds 5 [--epochs 3] [--threads 1] [--out rows.json]
    python bench/small_models.py --workload digits --rounds 5 --epochs 20 --paired
    python bench/small_models.py --workload tabular --rounds 5 [--recipe_args='--dropout 0']
    python bench/small_models.py --workload ngram --rounds 5 --text_dir /tmp/scale/man100k [--rows 100000]
    python bench/small_models.py --workload ngram --sgd --text_dir /tmp/scale/man100k   # + scikit-learn's SGDClassifier

Workloads (real data, each the same model, data and optimizer on both sides):
- digits: recipes/digits.py's defaults (its `DigitsCNN`, micro-batch 32, AdamW, clipping at 1.0) on
  scikit-learn's 8x8 digits;
- tabular: a recipe written here with the public API only (as a user would): scikit-learn's breast
  cancer measurements (569 tumours, 30 numeric columns, standardized with the training statistics),
  an MLP (30 -> 64 -> 2 with keyed dropout), micro-batch 32, AdamW;
- ngram: recipes/text_classification.py's default n-gram model (hashed word and character n-grams,
  IDF-weighted, one embedding-bag table) on man-page lines (`bench/scale.py build`): --text_dir holds
  train.csv and valid.csv.

Each round runs, one after the other in fresh processes, (1) the hand-written loop: the recipe's own data (its
build_data, as tensors or through a plain DataLoader with the recipe's collate function), its model,
`torch.optim.AdamW` with the recipe's learning rate and weight decay (torch's default implementation, as a
plain loop writes it; --hand_fused: its fused kernel, the one the framework uses on a CPU and CUDA), a seeded
shuffle per epoch, clipping at 1.0, nothing else; (2) the recipe through the framework (`python recipe ...`),
whose summary.json gives its training samples/s and `data_wait_share`. A run's rate is its fastest window of
10 optimizer steps (the hand-written loop reads the clock every 10 steps; the framework's metrics.jsonl has
its training time every 10 steps, --logging_steps' default): a shared machine's interruptions only ever slow a
window down. The whole-run rates (first step to last) are kept too. The order alternates between rounds. Every
process is pinned to the same core set (--cpus, default: the last --threads cores) with --threads intra-op
threads. On a CUDA machine both sides train on the GPU.

With --paired, both sides run at once on the same cores instead: the hand-written loop starts at the framework's
10th step and trains until the framework ends, so the two share the cores in slices of milliseconds and every
change in the machine's speed reaches both alike; each side's rate is then its median 10-step window, and the
noise is the spread of the per-round ratios (for runs of many windows: digits at 10 or more epochs; a short
run's evaluation pauses leave the other side alone on the cores).

It prints one JSON line per run and a summary line: each side's median samples/s and spread
((max - min) / median), the ratio of medians (and of the whole-run medians), the median of the rounds' own
ratios (`round_ratio_median`, and `round_ratio_median_whole_runs`: the two runs of a round are seconds apart,
while a shared machine's speed shifts between runs), a verdict only where the ratio is further from 1 than
the larger spread, the framework's median data_wait_share, and the per-step
overhead: the time of one optimizer step in the framework minus the hand-written loop's (from the
medians), in microseconds.
With --sgd (ngram), scikit-learn's SGDClassifier (hinge loss, the classic fast baseline) trains on the
same hashed n-gram features (the same IDF weights, as a sparse matrix), timed the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKLOADS = ("digits", "tabular", "ngram")
DEFAULT_EPOCHS = {"digits": 3, "tabular": 20, "ngram": 1}


# ---- the tabular recipe: the public API only, as a user writes one ------------------------------------------------

def tabular_recipe():
    """The breast-cancer MLP recipe (built on first use: the framework is imported only by the processes that
    train)."""
    import torch
    from datasets import Dataset
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from torch import nn

    from framework import KeyedDropout, Recipe, RecipeData, TrainingConfig, flag

    @dataclass
    class CancerConfig(TrainingConfig):
        output_dir: str = "outputs/cancer"
        hidden: int = flag("Width of the hidden layer.", default=64)
        dropout: float = flag("Dropout after the hidden layer.", default=0.1)

    class MLP(nn.Module):
        def __init__(self, features: int, hidden: int, classes: int, dropout: float):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), KeyedDropout(dropout),
                                        nn.Linear(hidden, classes))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.layers(features)

    def build_data(config, trained=None) -> RecipeData:
        data = load_breast_cancer()
        x_train, x_valid, y_train, y_valid = train_test_split(data.data, data.target, test_size=0.2,
                                                              stratify=data.target, random_state=0)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6

        def split(x, y):
            return Dataset.from_dict({"features": ((x - mean) / std).astype("float32"), "labels": y}).with_format(
                "torch")

        return RecipeData(list(data.target_names), train=split(x_train, y_train), eval=split(x_valid, y_valid))

    def build_model(config, data: RecipeData) -> nn.Module:
        return MLP(30, config.hidden, len(data.class_names), config.dropout)

    return Recipe(CancerConfig, build_data, build_model, model_flags=("hidden",), name="tabular")


# ---- each workload's recipe, and its data and model for the hand-written loop -------------------------------------

def _recipe_command(workload: str, args) -> list[str]:
    if workload == "digits":
        return [sys.executable, str(REPO / "recipes" / "digits.py")]
    if workload == "tabular":
        return [sys.executable, __file__, "--tabular_child"]
    text = Path(args.text_dir)
    return [sys.executable, str(REPO / "recipes" / "text_classification.py"), "--train_file", str(text / "train.csv"),
            "--validation_file", str(text / "valid.csv"), "--model", "ngram", "--baseline", "false"]


def _extra(args) -> list[str]:
    """--recipe_args: the recipe's own flags, the same on both sides (the hand-written loop builds its model and
    optimizer from the recipe's config)."""
    return shlex.split(args.recipe_args or "")


def _workload_parts(workload: str, args):
    """(config, train split, collate function or None, model) as the recipe builds them."""
    sys.path[:0] = [str(REPO), str(REPO / "recipes")]
    from framework.core.config import parse_config

    if workload == "digits":
        from recipes import digits

        config = parse_config(digits.DigitsConfig, _extra(args))
        train, _, names = digits.load_splits(config)
        return config, train, None, digits.DigitsCNN(config.channels, len(names), config.dropout)
    if workload == "tabular":
        recipe = tabular_recipe()
        config = parse_config(recipe.config_class, _extra(args))
        data = recipe.build_data(config)
        return config, data.train, None, recipe.build_model(config, data)
    import text_classification as text

    config = parse_config(text.TextConfig, _recipe_command("ngram", args)[2:] + _extra(args)
                          + ["--output_dir", args.scratch])
    data = text.build_data(config)
    return config, data.train, data.collate_fn, text.build_model(config, data)


def hand_written(workload: str, epochs: int, args) -> dict:
    """The hand-written loop, timed from its first step to its last."""
    import torch

    from framework.train.sparse import clip_grad_norm_ as clip_sparse

    config, train, collate, model = _workload_parts(workload, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the framework trains too
    model.to(device)
    torch.manual_seed(config.seed)
    if config.optim == "sgd":  # the n-gram model's: plain SGD, its table's gradient sparse
        optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                      fused=True if args.hand_fused else None)  # None: torch's default (foreach)
    # torch's clipping rejects a sparse gradient; the same rule on the coalesced one is framework.train.sparse's
    sparse = any(getattr(m, "sparse", False) for m in model.modules())
    clip = clip_sparse if sparse else torch.nn.utils.clip_grad_norm_
    batch, samples = config.per_device_train_batch_size, 0
    generator = torch.Generator().manual_seed(config.seed)
    if collate is None:  # a small torch-formatted set: its columns as tensors, a micro-batch is an index
        columns = {k: v.to(device) for k, v in train[:].items()}
        inputs = {k: v for k, v in columns.items() if k != "labels"}
        labels = columns["labels"]

        def batches():
            order = torch.randperm(len(labels), generator=generator).to(device)
            for start in range(0, len(labels), batch):
                rows = order[start:start + batch]
                yield {k: v[rows] for k, v in inputs.items()}, labels[rows]
    else:  # rows of different lengths: a plain DataLoader with the recipe's collate function
        loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, collate_fn=collate,
                                             generator=generator)

        def batches():
            for b in loader:
                b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
                yield {k: v for k, v in b.items() if k != "labels"}, b["labels"]
    model.train()
    params, step, marks = list(model.parameters()), 0, []
    if args.start_when:  # --paired: start at the framework's 10th step (its first log line)
        while not os.path.exists(args.start_when):
            time.sleep(0.002)
    started = time.perf_counter()
    epoch = 0
    while epoch < epochs or (args.until_pid and _alive(args.until_pid)):  # --paired: as long as the framework runs
        epoch += 1
        for x, y in batches():
            loss = torch.nn.functional.cross_entropy(model(**x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip(params, 1.0)
            optimizer.step()
            samples += len(y)
            step += 1
            if step % WINDOW_STEPS == 0:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # as the framework's log line (a loss read) waits for the step
                marks.append((step, time.perf_counter() - started))
                if args.until_pid and epoch > epochs and not _alive(args.until_pid):
                    break
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"side": "hand-written", "samples_per_s": samples / elapsed, "micro_batch": batch,
            "window_samples_per_s": fastest_window(marks, batch), "median_window_samples_per_s": median_window(marks, batch)}


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


WINDOW_STEPS = 10  # the framework's default --logging_steps: its metrics.jsonl has the training time every 10 steps


def _window_rates(marks: list[tuple[int, float]], batch: int) -> list[float]:
    """Samples/s of each window between consecutive (step, seconds of training) marks (micro-batch x steps
    samples a window; an epoch's last, shorter step makes one window in five 1% slower)."""
    return [(b_step - a_step) * batch / (b_time - a_time)
            for (a_step, a_time), (b_step, b_time) in zip(marks, marks[1:]) if b_time > a_time]


def fastest_window(marks: list[tuple[int, float]], batch: int) -> float:
    """The best window rate: a shared machine's interruptions only ever slow a window down, so the fastest one is
    the least disturbed measure."""
    rates = _window_rates(marks, batch)
    return max(rates) if rates else float("nan")


def median_window(marks: list[tuple[int, float]], batch: int) -> float:
    """The median window rate (--paired: both sides share the cores throughout, so no window is alone)."""
    rates = _window_rates(marks, batch)
    return statistics.median(rates) if rates else float("nan")


def sgd_baseline(epochs: int, args) -> dict:
    """scikit-learn's SGDClassifier on the n-gram model's own features (a sparse matrix of the weights its forward
    computes: (1 + ln count) x IDF, word and character blocks each scaled to unit norm), `epochs` passes, timed over
    the fit alone."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import SGDClassifier

    config, train, _, model = _workload_parts("ngram", args)
    columns = train.with_format("numpy")[:]
    ids = np.concatenate(columns["input_ids"]).astype(np.int64)
    counts = np.concatenate(columns["counts"]).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum([len(row) for row in columns["input_ids"]])])
    rows = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    weights = np.where(counts > 0, 1.0 + np.log(np.maximum(counts, 1.0)), 0.0) * model.idf.numpy()[ids]
    is_word = ids < int(model.char_start)
    for block in (is_word, ~is_word):  # unit L2 norm per sample and block, as NgramClassifier.forward
        norms = np.sqrt(np.bincount(rows, weights=np.where(block, weights, 0.0) ** 2, minlength=len(starts) - 1))
        weights = np.where(block, weights / np.maximum(norms[rows], 1e-12), weights)
    matrix = csr_matrix((weights, ids, starts), shape=(len(starts) - 1, model.table.num_embeddings))
    labels = np.asarray(columns["labels"])
    classifier = SGDClassifier(max_iter=epochs, tol=None, random_state=config.seed)
    started = time.perf_counter()
    classifier.fit(matrix, labels)
    elapsed = time.perf_counter() - started
    return {"side": "sgd", "samples_per_s": len(labels) * epochs / elapsed, RATE: len(labels) * epochs / elapsed,
            "train_accuracy": float(classifier.score(matrix, labels))}


def framework(workload: str, epochs: int, args):
    """Start the recipe in its own process; returns a function that waits for it and gives its summary.json's
    rate."""
    out = tempfile.TemporaryDirectory()
    command = _recipe_command(workload, args) + _extra(args) + ["--output_dir", out.name, "--num_train_epochs",
                                                                str(epochs)]
    process = _started(command, args)

    def finish() -> dict:
        _waited(process)
        with out:
            summary = json.loads((Path(out.name) / "summary.json").read_text())
            lines = [json.loads(line) for line in (Path(out.name) / "metrics.jsonl").read_text().splitlines() if line]
        batch = summary["per_device_train_batch_size"]
        marks = [(r["step"], r["elapsed_s"]) for r in lines if "elapsed_s" in r and r["step"] % WINDOW_STEPS == 0]
        return {"side": "framework", "samples_per_s": summary["train_samples_per_second"],
                "data_wait_share": summary["data_wait_share"], "micro_batch": batch,
                "window_samples_per_s": fastest_window(marks, batch),
                "median_window_samples_per_s": median_window(marks, batch)}

    finish.pid = process.pid
    finish.first_log = str(Path(out.name) / "metrics.jsonl")  # written at its 10th step
    return finish


def _child_env(args) -> dict:
    threads = str(args.threads)
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "PYTHONPATH": str(REPO)}


def _cpus(args) -> set[int]:
    if args.cpus:
        return {int(c) for c in args.cpus.split(",")}
    available = sorted(os.sched_getaffinity(0))
    return set(available[-args.threads:])


def _pinning(args):
    cpus = _cpus(args)
    return lambda: os.sched_setaffinity(0, cpus)


def _start_side(side: str, args, start_when: str | None = None, until_pid: int | None = None):
    """Start one side's run; returns a function that waits for it and gives its row."""
    if side == "framework":
        return framework(args.workload, args.epochs, args)
    child = [sys.executable, __file__, "--child", side, "--workload", args.workload, "--epochs", str(args.epochs),
             "--threads", str(args.threads), "--scratch", args.scratch]
    if start_when:
        child += ["--start_when", start_when, "--until_pid", str(until_pid)]
    if args.text_dir:
        child += ["--text_dir", args.text_dir]
    if args.recipe_args:
        child.append(f"--recipe_args={args.recipe_args}")  # one word: it starts with --
    if args.hand_fused:
        child.append("--hand_fused")
    process = _started(child, args)
    return lambda: json.loads(_waited(process).strip().splitlines()[-1])


def _started(command: list[str], args) -> subprocess.Popen:
    """A run's process, pinned to the bench's cores with its thread count."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_child_env(args), preexec_fn=_pinning(args))


def _waited(process: subprocess.Popen) -> str:
    """The process's stdout once it ended; its stderr's end as the bench's error if it failed."""
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise SystemExit(stderr[-2000:])
    return stdout


def _paired_round(round_: int, args) -> list[dict]:
    """Both sides at once on the same --threads cores: the hand-written loop starts at the framework's 10th step
    and trains until the framework ends, so the two share the cores in slices of milliseconds throughout and every
    change in the machine's speed reaches both alike. Each side's rate is its median 10-step window."""
    finish_framework = _start_side("framework", args)
    finish_hand = _start_side("hand-written", args, start_when=finish_framework.first_log,
                              until_pid=finish_framework.pid)
    rows = [{"round": round_, **finish_framework()}, {"round": round_, **finish_hand()}]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _run_side(side: str, args) -> dict:
    return _start_side(side, args)()


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


RATE = "window_samples_per_s"  # what the summary compares: each run's fastest 10-step window


def summarize(rows: list[dict], sides: tuple[str, ...], paired: bool = False) -> dict:
    """Medians, spreads, the ratio of medians with a verdict beyond the spread, and the per-step overhead."""
    rate = "median_window_samples_per_s" if paired else RATE
    rates = {side: [r[rate] for r in rows if r["side"] == side] for side in sides}
    summary = {f"{side}_median": round(statistics.median(v), 1) for side, v in rates.items()}
    summary.update({f"{side}_spread": round(_spread(v), 3) for side, v in rates.items()})
    ratio = summary["framework_median"] / summary["hand-written_median"]
    ratios = [f[rate] / h[rate] for f in rows for h in rows
              if f["side"] == "framework" and h["side"] == "hand-written" and f["round"] == h["round"]]
    summary["round_ratios"] = [round(r, 3) for r in ratios]
    summary["round_ratio_spread"] = round(_spread(ratios), 3)
    # The two runs of a round are seconds apart; a shared VM's speed changes over minutes (this project's moves
    # between two levels 1.3x apart), so the median of the rounds' own ratios is steadier than the ratio of medians
    summary["round_ratio_median"] = round(statistics.median(ratios), 3)
    # Paired runs see the same machine, so the ratio's own spread is the noise; apart, either side's
    noise = summary["round_ratio_spread"] if paired else max(summary["framework_spread"], summary["hand-written_spread"])
    summary["ratio"] = round(ratio, 3)
    summary["verdict"] = ("none: one round has no spread" if len(ratios) < 2
                          else "within the spread" if abs(ratio - 1) <= noise
                          else "framework faster" if ratio > 1 else "framework slower")
    batch = next(r["micro_batch"] for r in rows if r["side"] == "framework")
    # Paired, the two share the cores (and their caches): a step's time alone is not measured
    summary["overhead_us_per_step"] = None if paired else round(
        1e6 * batch * (1 / summary["framework_median"] - 1 / summary["hand-written_median"]), 1)
    summary["framework_data_wait_share"] = round(statistics.median(
        r["data_wait_share"] for r in rows if r["side"] == "framework"), 3)
    overall = {side: statistics.median(r["samples_per_s"] for r in rows if r["side"] == side) for side in sides}
    summary["ratio_whole_runs"] = round(overall["framework"] / overall["hand-written"], 3)  # first step to last
    summary["round_ratio_median_whole_runs"] = round(statistics.median(
        f["samples_per_s"] / h["samples_per_s"] for f in rows for h in rows
        if f["side"] == "framework" and h["side"] == "hand-written" and f["round"] == h["round"]), 3)
    if "sgd" in rates:
        summary["framework_vs_sgd"] = round(summary["framework_median"] / summary["sgd_median"], 3)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--workload", choices=WORKLOADS, default="digits")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, help="epochs per run (default: digits 3, tabular 20, ngram 1)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of every process (default 1)")
    parser.add_argument("--cpus", help="comma list of cores to pin every process to (default: the last --threads)")
    parser.add_argument("--text_dir", help="ngram: a folder with train.csv and valid.csv (bench/scale.py build)")
    parser.add_argument("--sgd", action="store_true", help="ngram: also scikit-learn's SGDClassifier")
    parser.add_argument("--recipe_args", help="the recipe's own flags for both sides: --recipe_args='--dropout 0'")
    parser.add_argument("--hand_fused", action="store_true",
                        help="the hand-written loop's AdamW fused too (the framework's kernel on a CPU and CUDA): "
                             "the framework's own cost apart from the optimizer's kernel")
    parser.add_argument("--out", help="write {'rows': [...], 'summary': {...}} here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tabular_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--start_when", help=argparse.SUPPRESS)
    parser.add_argument("--until_pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--paired", action="store_true",
                        help="run both sides at once on the same cores; compare median windows")
    args, rest = parser.parse_known_args(argv)
    if args.tabular_child:  # the framework side of the tabular workload: the recipe's own command line
        sys.path.insert(0, str(REPO))
        from framework import run, run_main

        raise SystemExit(run_main(lambda: run(tabular_recipe(), rest)))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.paired and args.sgd:
        parser.error("--paired runs the framework and the hand-written loop side by side; run --sgd without it")
    if args.workload == "ngram" and not args.text_dir:
        parser.error("--workload ngram needs --text_dir (python bench/scale.py build DIR --rows 100000)")
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.workload]
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        row = sgd_baseline(args.epochs, args) if args.child == "sgd" else hand_written(args.workload, args.epochs,
                                                                                          args)
        print(json.dumps(row))
        return
    sides = ("hand-written", "framework") + (("sgd",) if args.sgd else ())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch  # the hand-written side's --output_dir (the text recipe caches beside its data)
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else tuple(reversed(sides))
            if args.paired:
                rows += _paired_round(round_, args)
                continue
            for side in order:
                row = {"round": round_, **_run_side(side, args)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {"workload": args.workload, "epochs": args.epochs, "threads": args.threads,
               "recipe_args": args.recipe_args, "hand_fused": args.hand_fused,
               "cpus": sorted(_cpus(args)), **summarize(rows, sides, args.paired)}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
