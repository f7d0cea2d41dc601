"""A small model against a hand-written loop: recipes/digits.py defaults vs a dozen-line PyTorch loop.

    python bench/small_models.py --rounds 5 [--epochs 3] [--out rows.json]

Each round runs, one after the other in fresh processes, (1) the hand-written loop: the digits recipe's own
`DigitsCNN` and train split as two tensors, micro-batch 32, AdamW at the recipe's learning rate and weight
decay, clipping at 1.0, a seeded shuffle per epoch; and (2) `python recipes/digits.py --num_train_epochs N`,
whose summary.json gives its training samples/s and `data_wait_share`. The order alternates between rounds.
It prints one JSON line per run and a summary line: each side's median samples/s and spread ((max - min) /
median), the ratio of medians, and the framework's median data_wait_share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def hand_written(epochs: int) -> dict:
    """The hand-written loop, timed from its first step to its last (data already tensors)."""
    sys.path[:0] = [str(REPO), str(REPO / "recipes")]
    import torch

    from recipes import digits

    config = digits.DigitsConfig()
    train, _, names = digits.load_splits(config)
    columns = train[:]  # the whole split as tensors (a column alone is read lazily from Arrow)
    x, y = columns["pixel_values"], columns["labels"]
    torch.manual_seed(config.seed)
    model = digits.DigitsCNN(config.channels, len(names), config.dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batch, samples = config.per_device_train_batch_size, 0
    generator = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            samples += len(rows)
    elapsed = time.perf_counter() - started
    return {"side": "hand-written", "samples_per_s": samples / elapsed}


def framework(epochs: int) -> dict:
    """recipes/digits.py with its defaults, in its own process; its summary.json's rate."""
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, str(REPO / "recipes" / "digits.py"), "--output_dir", out,
                               "--num_train_epochs", str(epochs)], capture_output=True, text=True,
                              env={"HF_DATASETS_OFFLINE": "1", **_environ()})
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        summary = json.loads((Path(out) / "summary.json").read_text())
    return {"side": "framework", "samples_per_s": summary["train_samples_per_second"],
            "data_wait_share": summary["data_wait_share"]}


def _environ() -> dict:
    import os

    return dict(os.environ)


def _run_side(side: str, epochs: int) -> dict:
    if side == "framework":
        return framework(epochs)
    done = subprocess.run([sys.executable, __file__, "--child", "--epochs", str(epochs)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", help="write {'rows': [...], 'summary': {...}} here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(hand_written(args.epochs)))
        return
    rows = []
    for round_ in range(args.rounds):
        sides = ("hand-written", "framework") if round_ % 2 == 0 else ("framework", "hand-written")
        for side in sides:
            row = {"round": round_, **_run_side(side, args.epochs)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    rates = {side: [r["samples_per_s"] for r in rows if r["side"] == side] for side in ("hand-written", "framework")}
    summary = {f"{side}_median": round(statistics.median(v), 1) for side, v in rates.items()}
    summary.update({f"{side}_spread": round(_spread(v), 3) for side, v in rates.items()})
    summary["ratio"] = round(summary["framework_median"] / summary["hand-written_median"], 3)
    summary["framework_data_wait_share"] = round(statistics.median(
        r["data_wait_share"] for r in rows if r["side"] == "framework"), 3)
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
