"""Training speed with keyed dropout (framework.KeyedDropout) against torch's nn.Dropout, on the recipes' models.

Each run is a real recipe run in its own process. With `torch`, every KeyedDropout of the
recipe's model is swapped for `nn.Dropout` (same p) before the model is built; nothing else
changes. The two kinds run back to back, in alternating order, --repeats times; the table
shows each one's median `train_samples_per_second` (summary.json) and spread
((max - min) / median), and the ratio keyed / torch of each back-to-back pair (median,
lowest, highest): a pair shares the machine's state, so its ratio is steadier than the
medians' ratio on a noisy host.

    python bench/dropout_cost.py --out OUT                                # digits only
    python bench/dropout_cost.py --out OUT --text_dir /tmp/real/man --image_dir /tmp/real/icons
    python bench/dropout_cost.py --out OUT --device_args "--mixed_precision fp16"   # e.g. on a GPU

--text_dir holds train.csv and valid.csv (text, label); it trains the transformer encoder.
--image_dir holds train/ and valid/ class folders. bench/real_data.py builds both from files
on the machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULES = {"digits": "digits", "text": "text_classification", "image": "image_classification"}
MODEL_MODULES = {"digits": "digits", "text": "text.models", "image": "image_classification"}


def recipe_args(name: str, args: argparse.Namespace) -> list[str]:
    """The recipe's flags: the default dropout (0.1) everywhere, no baseline, few evaluations."""
    common = ["--mixed_precision", "no", "--logging_steps", "50", *shlex.split(args.device_args)]
    if name == "digits":
        return [*common, "--num_train_epochs", "30"]
    if name == "text":
        return [*common, "--train_file", str(Path(args.text_dir) / "train.csv"),
                "--validation_file", str(Path(args.text_dir) / "valid.csv"), "--model", "transformer",
                "--max_steps", str(args.steps), "--baseline", "false"]
    return [*common, "--train_dir", str(Path(args.image_dir) / "train"),
            "--validation_dir", str(Path(args.image_dir) / "valid"), "--max_steps", str(args.steps),
            "--baseline", "false"]


def child(kind: str, name: str, argv: list[str]) -> None:
    """Run one recipe in this process, with torch's dropout in place of the keyed one when `kind` is torch."""
    sys.path[:0] = [str(REPO), str(REPO / "recipes")]
    if kind == "torch":
        from torch import nn

        module = importlib.import_module(MODEL_MODULES[name])
        module.KeyedDropout = lambda p=0.1, key=None: nn.Dropout(p)
    from framework.core.errors import run_main

    recipe = importlib.import_module(MODULES[name])
    raise SystemExit(run_main(lambda: recipe.main(argv)))


def one_run(kind: str, name: str, out: Path, args: argparse.Namespace) -> dict:
    """samples/s and the number of keyed layers of one run in a fresh process."""
    argv = [*recipe_args(name, args), "--output_dir", str(out)]
    done = subprocess.run([sys.executable, __file__, "--child", kind, name, "--", *argv], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} ({kind}) failed:\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"samples_per_second": summary["train_samples_per_second"],
            "keyed_dropout_layers": summary["keyed_dropout_layers"], "accuracy": summary.get("eval_accuracy")}


def main() -> None:
    """Run the recipes with each kind of dropout in turn and write the table (or, with --child, one run)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--out", help="a folder for the runs and results.json (required)")
    parser.add_argument("--text_dir", help="train.csv and valid.csv for the text encoder")
    parser.add_argument("--image_dir", help="train/ and valid/ class folders for the image recipe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of the text and image runs")
    parser.add_argument("--device_args", default="", help="extra recipe flags, e.g. '--mixed_precision fp16'")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        child(*args.child, rest[1:] if rest[:1] == ["--"] else rest)
        return
    if not args.out or rest:
        parser.error("--out is required" if not args.out else f"unknown arguments: {' '.join(rest)}")
    names = ["digits"] + (["text"] if args.text_dir else []) + (["image"] if args.image_dir else [])
    out = Path(args.out)
    rows = []
    for name in names:
        rates = {"keyed": [], "torch": []}
        for repeat in range(args.repeats):
            for kind in ("keyed", "torch") if repeat % 2 == 0 else ("torch", "keyed"):
                result = one_run(kind, name, out / f"{name}_{kind}_{repeat}", args)
                assert (result["keyed_dropout_layers"] > 0) == (kind == "keyed"), result
                rates[kind].append(result["samples_per_second"])
        row = {"recipe": name, **{f"{k}_samples_per_second": statistics.median(v) for k, v in rates.items()},
               **{f"{k}_spread": (max(v) - min(v)) / statistics.median(v) for k, v in rates.items()},
               "runs": rates}
        ratios = [k / t for k, t in zip(rates["keyed"], rates["torch"])]
        row.update(keyed_over_torch=statistics.median(ratios), pair_ratios=ratios)
        rows.append(row)
        print(f"{name:7s} keyed {row['keyed_samples_per_second']:9.1f}/s (spread {row['keyed_spread']:.1%})  "
              f"torch {row['torch_samples_per_second']:9.1f}/s (spread {row['torch_spread']:.1%})  "
              f"keyed/torch per pair {row['keyed_over_torch']:.3f} ({min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
