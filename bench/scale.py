"""Scale measurements on real data: large sets built from this machine's man pages and icons, and recipe runs.

    python bench/scale.py build OUT/man100k --rows 100000               # 17 classes: language / English section
    python bench/scale.py build OUT/pages1k --rows 100000 --pages 1000  # 1,000 classes: the man page itself
    python bench/scale.py images OUT/icons100k --files 100000           # 32x32 PNG files, 8 icon contexts
    python bench/scale.py run OUT/man100k -- --max_steps 200            # one recipe run: time, peak RSS, rate
    python bench/scale.py evaluation --samples 100000 --classes 1000    # host memory of an evaluation's probabilities

`build` reads every line of at least 40 characters of text (roff requests dropped) of the
gzipped man pages under /usr/share/man (about 1.1M lines on a Debian machine with the
common packages). A line is labelled by the page's language directory, or for English
pages by their section ("en.1", "en.8", ...), and the 17 most frequent labels are kept;
with `--pages N` a line is labelled by its page instead, for the N pages with the most
lines. Training rows are drawn at random from those lines (repeating them only when more
rows are asked for than there are lines); 5,000 other lines are the validation file.
`images` writes OUT/train/<context>/<n>.png (`--files` of them) and 5,000 OUT/valid files:
each a random crop (60-100% of the side) of one of the Adwaita icons on this machine
(/usr/share/icons/Adwaita, 32x32 and 48x48), resized to 32x32 RGB over white, labelled by
the icon's context (actions, devices, ...); training and validation files come from
different icons (bench/real_data.py's 80/20 split by icon name).
`evaluation` runs the framework's `predict` (one process) over that many samples of a model that
returns random logits for that many classes, and prints the growth of peak RSS during it, with
the probabilities kept as the framework keeps them and, for comparison, in full.
`run` starts the text recipe on OUT/train.csv and OUT/valid.csv, or the image recipe on
OUT/train/ and OUT/valid/, as a subprocess and prints one JSON line: wall time, peak RSS of
the process tree, preparation time, training samples/s and accuracy (from summary.json).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from real_data import icon_splits, write_csvs  # bench/: run as a script, its folder is on the path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the framework of this checkout

MAN_ROOT = Path("/usr/share/man")
REPO = Path(__file__).resolve().parent.parent
VALID_ROWS = 5000


def man_lines(root: Path = MAN_ROOT) -> list[tuple[str, str, str]]:
    """(text, language-or-section label, page name) of every text line of >= 40 characters."""
    found = []
    for folder in sorted(root.iterdir()):
        for path in sorted(folder.rglob("*.gz")):
            section = path.parent.name  # man1, man8, ...
            label = f"en.{section[3:]}" if folder.name.startswith("man") else folder.name
            try:
                with gzip.open(path, "rt", errors="replace") as handle:
                    for line in handle:
                        line = line.strip()
                        if len(line) >= 40 and not line.startswith((".", "'", '\\"')):
                            found.append((line.replace("\\fB", "").replace("\\fR", "").replace("\\fI", ""),
                                          label, f"{folder.name}/{path.name}"))
            except (OSError, EOFError):
                continue
    return found


def build(out: Path, rows: int, pages: int, seed: int = 0) -> None:
    """Write out/train.csv (`rows` rows) and out/valid.csv (VALID_ROWS rows) of (text, label)."""
    lines = man_lines()
    if pages:
        biggest = {name for name, _ in Counter(page for _, _, page in lines).most_common(pages)}
        labelled = [(text, page) for text, _, page in lines if page in biggest]
    else:
        keep = {label for label, _ in Counter(label for _, label, _ in lines).most_common(17)}
        labelled = [(text, label) for text, label, _ in lines if label in keep]
    rng = random.Random(seed)
    rng.shuffle(labelled)
    valid, pool = labelled[:VALID_ROWS], labelled[VALID_ROWS:]
    train = pool[:rows] if rows <= len(pool) else pool + [rng.choice(pool) for _ in range(rows - len(pool))]
    write_csvs(out, train, valid)
    (out / "labels.txt").write_text(",".join(sorted({label for _, label in train})))  # --label_names for --streaming
    print(f"{out}: {len(train)} train ({len(set(t for t, _ in train))} distinct), {len(valid)} valid, "
          f"{len({label for _, label in train})} classes, from {len(lines)} lines")


def build_images(out: Path, files: int, seed: int = 0) -> None:
    """out/train/<context>/<n>.png (`files` of them) and VALID_ROWS out/valid files: random crops of real icons."""
    from PIL import Image

    splits = icon_splits(("32x32", "48x48"))
    rng = random.Random(seed)
    sources = {}
    for split, count in (("train", files), ("valid", VALID_ROWS)):
        pool = [(context, png) for context, by_split in splits.items() for pngs in by_split[split].values()
                for png in pngs]
        for context in splits:
            (out / split / context).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            context, png = rng.choice(pool)
            if png not in sources:
                with Image.open(png) as image:
                    rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                sources[png] = Image.alpha_composite(white, rgba).convert("RGB")
            image = sources[png]
            side = round(image.width * rng.uniform(0.6, 1.0))
            left, top = rng.randint(0, image.width - side), rng.randint(0, image.height - side)
            crop = image.crop((left, top, left + side, top + side)).resize((32, 32))
            crop.save(out / split / context / f"{n}.png")
        print(f"{out / split}: {count} files from {len(pool)} icons, {len(splits)} classes")


def evaluation_memory(samples: int, classes: int, keep_everything: bool) -> dict:
    """Peak RSS growth of one `predict` over `samples` random-logit samples of `classes` classes."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    from framework.evaluate import probabilities
    from framework.evaluate.evaluation import build_report, predict

    if keep_everything:
        probabilities.FULL_PROBABILITIES = samples * classes
    accelerator = Accelerator(cpu=True)
    data = TensorDataset(torch.arange(samples), torch.randint(0, classes, (samples,)))
    loader = accelerator.prepare(DataLoader(data, batch_size=256, collate_fn=lambda rows: {
        "seed": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}))

    class RandomLogits(torch.nn.Module):
        def forward(self, seed: torch.Tensor) -> torch.Tensor:
            return torch.randn(len(seed), classes) * 3

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    result = predict(accelerator, RandomLogits(), loader, lambda logits, labels: torch.nn.functional.cross_entropy(
        logits, labels, reduction="none"), show_progress=False)
    report = build_report(result, [str(c) for c in range(classes)])
    return {"samples": samples, "classes": classes, "kept": report.metrics["probabilities_kept"],
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_growth_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before, 2)}


def run(folder: Path, recipe_args: list[str], processes: int) -> dict:
    """One recipe run on folder/{train,valid}.csv (text) or folder/{train,valid}/ (images); what it cost."""
    out = folder / "run"
    config = "cpu_2proc.yaml" if processes == 2 else "cpu.yaml"
    text = next((folder / f"train.{kind}" for kind in ("csv", "jsonl") if (folder / f"train.{kind}").is_file()), None)
    if text is not None:
        recipe, data = "text_classification.py", ["--train_file", str(text), "--validation_file",
                                                  str(text.with_name(f"valid{text.suffix}"))]
    else:
        recipe, data = "image_classification.py", ["--train_dir", str(folder / "train"), "--validation_dir",
                                                   str(folder / "valid")]
    if "--streaming" in recipe_args and "--label_names" not in recipe_args:  # a stream brings no class list
        labels = folder / "labels.txt"
        if not labels.is_file():
            import csv

            with open(text, newline="") as handle:
                rows = csv.DictReader(handle) if text.suffix == ".csv" else map(json.loads, handle)
                labels.write_text(",".join(sorted({row["label"] for row in rows})))
        recipe_args = [*recipe_args, "--label_names", labels.read_text()]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / config), str(REPO / "recipes" / recipe), *data,
               "--output_dir", str(out), "--overwrite_output_dir", "true", "--baseline", "false", *recipe_args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    shown = " ".join(a if len(a) < 60 else a[:57] + "..." for a in recipe_args)
    return {"args": shown, "processes": processes, "wall_s": round(wall, 1),
            "preparation_s": round(summary["preparation_time_s"], 1),
            "first_step_s": round(summary.get("time_to_first_step_s") or -1, 1),  # -1: a version without it
            "peak_rss_gb_one_process": round(summary["peak_host_rss_mib"] / 1024, 2),
            "peak_rss_gb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
            "train_samples_per_second": round(summary["train_samples_per_second"]),
            "optimizer_steps": summary["optimizer_steps"], "eval_accuracy": round(summary["eval_accuracy"], 4)}


def main(argv: list[str] | None = None) -> None:
    """build / run, as the module docstring shows."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--rows", type=int, default=100_000)
    b.add_argument("--pages", type=int, default=0, help="label lines by page, for this many pages (0: 17 labels)")
    i = sub.add_parser("images")
    i.add_argument("out", type=Path)
    i.add_argument("--files", type=int, default=100_000)
    e = sub.add_parser("evaluation")
    e.add_argument("--samples", type=int, default=100_000)
    e.add_argument("--classes", type=int, default=1000)
    e.add_argument("--full", action="store_true", help="keep every probability (what bounding saves)")
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("--processes", type=int, choices=(1, 2), default=1)
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # the recipe's flags come after --
    args = parser.parse_args(argv[:cut])
    if args.command == "build":
        build(args.out, args.rows, args.pages)
    elif args.command == "images":
        build_images(args.out, args.files)
    elif args.command == "evaluation":
        print(json.dumps(evaluation_memory(args.samples, args.classes, args.full)))
    else:
        print(json.dumps(run(args.folder, argv[cut + 1:], args.processes)))


if __name__ == "__main__":
    main()
