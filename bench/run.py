"""Throughput and peak memory of this framework's loop against a hand-written PyTorch loop and its peers.

One workload (bench/RESULTS.md): a transformer encoder classifier on synthetic tokens,
AdamW, micro-batch x accumulation, gradient clipping at 1.0, DataLoader with
workers and pinned memory. Every peer gets the same optimizer settings (AdamW, lr 1e-4,
no weight decay; each run reports its optimizer's settings and the table refuses to
compare runs whose settings differ). Each (peer, precision) runs in its own process;
samples/s is timed after warm-up steps, between device synchronizations, over all
the timed optimizer steps. Peers alternate over --repeats runs (default 5); the table
shows each one's median and spread ((max - min) / median), and a ratio to `raw` in
the same invocation only where it is larger than the spread of both. Peak memory is
`torch.cuda.max_memory_allocated` (CUDA) or, on a CPU, the process's peak RSS above
its RSS once the peer's libraries and the data are loaded.

    python bench/run.py                      # full size (meant for a GPU), fp32 and fp16
    python bench/run.py --quick --out F.json # CPU size, under 3 minutes on 2 cores
    python bench/run.py --compile            # also raw, accelerate and framework under torch.compile
    python bench/run.py --compile framework  # only the framework (and raw, its base) under torch.compile
    python bench/run.py --auto_batch_check   # effective batch 256 fp16: 256 x 1 vs auto micro-batch under 3 GiB

Peers: raw, accelerate, framework, and lightning / hf when those packages are installed.
With --compile, `raw+compile`, `accelerate+compile` and `framework+compile`
(TorchInductor, mode default) are timed too, each against `raw+compile`. The
framework also runs with --gradient_checkpointing (`framework+ckpt`), compared with
the framework without it (samples/s and peak memory). Every row's model FLOP rate
(TFLOP/s) is its samples/s times the workload's FLOPs per sample, counted once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS = ("raw", "accelerate", "framework", "lightning", "hf")
COMPILABLE = ("raw", "accelerate", "framework")


@dataclass
class Workload:
    vocab: int = 32000
    seq: int = 256
    d_model: int = 512
    heads: int = 8
    ff: int = 2048
    layers: int = 6
    classes: int = 4
    micro: int = 64
    accum: int = 2
    warmup: int = 10
    steps: int = 40
    window: int = 10  # timed steps are cut into windows of this many steps; the fastest window counts
    workers: int = 2
    auto: bool = False  # framework only: --auto_find_batch_size, starting from micro, keeping micro x accum
    max_memory_gib: float = 0.0  # framework only: --max_memory_gib
    compile: bool = False  # raw / accelerate / framework: torch.compile (TorchInductor, mode default)
    checkpoint: bool = False  # framework only: --gradient_checkpointing


QUICK = dict(vocab=1000, seq=32, d_model=64, heads=4, ff=128, layers=2, micro=16, accum=2, warmup=10, steps=200,
             window=40, workers=0)
# --smoke: the quick model for a handful of steps; checks that the script and its rows work (tests), times nothing
SMOKE = {**QUICK, "warmup": 2, "steps": 20, "window": 10}


def workload_of(args) -> "Workload":
    """The workload the size flags ask for: full, --quick or --smoke."""
    return Workload(**(SMOKE if args.smoke else QUICK if args.quick else {}))


def _size_flags(args) -> list[str]:
    """The size flags a child process is given: the parent's."""
    return ["--quick"] * args.quick + ["--smoke"] * args.smoke


class EncoderClassifier(nn.Module):
    """Token embedding + learned positions, a pre-norm transformer encoder, mean pooling, a linear head."""

    def __init__(self, w: Workload):
        super().__init__()
        self.embed = nn.Embedding(w.vocab, w.d_model)
        self.pos = nn.Parameter(torch.zeros(1, w.seq, w.d_model))
        layer = nn.TransformerEncoderLayer(w.d_model, w.heads, w.ff, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, w.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(w.d_model)
        self.head = nn.Linear(w.d_model, w.classes)

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The encoder layers (the framework's --gradient_checkpointing)."""
        return list(self.encoder.layers)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(input_ids) + self.pos)
        return self.head(self.norm(hidden).mean(dim=1))


class SyntheticTokens(torch.utils.data.Dataset):
    """Deterministic random token sequences with random labels."""

    def __init__(self, w: Workload, size: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, w.vocab, (size, w.seq), generator=g)
        self.labels = torch.randint(0, w.classes, (size,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Libraries each peer loads, imported before the CPU memory baseline is taken.
LIBRARIES = {"accelerate": ["accelerate"], "framework": ["framework", "matplotlib.pyplot"],
             "lightning": ["lightning"], "hf": ["transformers"]}
_rss_baseline_mib = 0.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _take_rss_baseline(peer: str) -> None:
    """On a CPU, memory is the process's peak RSS above its RSS once the peer's libraries are loaded."""
    global _rss_baseline_mib
    import importlib

    for module in LIBRARIES.get(peer, []):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    with contextlib.suppress(OSError):
        _rss_baseline_mib = _current_rss_mib()


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - _rss_baseline_mib


def _is_mark(w: Workload, step: int) -> bool:
    """Whether optimizer step `step` (count of steps done) opens or closes a timed window."""
    return step >= w.warmup and (step - w.warmup) % w.window == 0 and step <= w.warmup + w.steps


def _rate(w: Workload, marks: dict[int, float], effective_batch: int = 0) -> float:
    """Samples/s over all timed steps: from the first mark (after warm-up) to the last."""
    first, last = min(marks), max(marks)
    return (last - first) * (effective_batch or w.micro * w.accum) / (marks[last] - marks[first])


ADAMW = {"lr": 1e-4, "weight_decay": 0.0}  # every peer's optimizer: asserted from the optimizers themselves


def optimizer_settings(optimizer) -> dict:
    """The hyperparameters of an optimizer's parameter groups (they must all agree), for comparing peers."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    keys = ("lr", "weight_decay", "betas", "eps", "amsgrad", "maximize", "fused")
    groups = {tuple((k, tuple(g[k]) if isinstance(g[k], (list, tuple)) else g[k]) for k in keys if k in g)
              for g in optimizer.param_groups if g["params"]}
    if len(groups) != 1:
        raise SystemExit(f"{type(optimizer).__name__} has parameter groups with different settings: {groups}")
    return {"type": type(optimizer).__name__, **{k: list(v) if isinstance(v, tuple) else v for k, v in groups.pop()}}


def _loader(w: Workload, dataset, device, batch: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=w.workers, pin_memory=device.type == "cuda",
                                       persistent_workers=w.workers > 0)


def _adamw(model, device):
    # fused on CUDA and on the CPU, as the framework's (framework.train.optim): the same kernel for every peer
    return torch.optim.AdamW(model.parameters(), **ADAMW, fused=True)


def run_raw(w: Workload, precision: str, dataset) -> tuple[float, float]:
    """A hand-written loop done right: autocast + GradScaler, loss / accum, unscale before clipping."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = EncoderClassifier(w).to(device)
    optimizer = _adamw(model, device)
    if w.compile:
        model = torch.compile(model)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    batches = iter(_loader(w, dataset, device, w.micro))
    marks = {}
    for step in range(w.warmup + w.steps + 1):
        if _is_mark(w, step):
            _sync(device)
            marks[step] = time.perf_counter()
            if step == w.warmup + w.steps:
                break
        for _ in range(w.accum):
            batch = next(batches)
            ids = batch["input_ids"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(ids).float(), labels)
            (scaler.scale(loss / w.accum) if scaler else loss / w.accum).backward()
        if scaler:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return _rate(w, marks), _peak_mib(device), optimizer_settings(optimizer)


def run_accelerate(w: Workload, precision: str, dataset) -> tuple[float, float]:
    """The plain Accelerate loop from its docs: prepare, accumulate(), backward, clip at sync, step."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=w.accum,
                              cpu=not torch.cuda.is_available(), dynamo_backend="inductor" if w.compile else None)
    torch.manual_seed(0)
    model = EncoderClassifier(w).to(accelerator.device)
    optimizer = _adamw(model, accelerator.device)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader(w, dataset, accelerator.device, w.micro))
    batches = iter(loader)
    marks = {}
    for step in range(w.warmup + w.steps + 1):
        if _is_mark(w, step):
            _sync(accelerator.device)
            marks[step] = time.perf_counter()
            if step == w.warmup + w.steps:
                break
        for _ in range(w.accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    return _rate(w, marks), _peak_mib(accelerator.device), optimizer_settings(optimizer)


def run_framework(w: Workload, precision: str, dataset) -> tuple[float, float, dict]:
    """This framework's runner (framework.run); the time comes from metrics.jsonl's elapsed_s."""
    from framework import Recipe, RecipeData, TrainingConfig, run

    def build_model(config, data):
        torch.manual_seed(0)
        return EncoderClassifier(w)

    recipe = Recipe(TrainingConfig, lambda c, t: RecipeData(
        ["0", "1", "2", "3"], train=dataset, eval=torch.utils.data.Subset(dataset, range(w.micro))), build_model)
    with tempfile.TemporaryDirectory() as out:
        config = TrainingConfig(output_dir=out, per_device_train_batch_size=w.micro,
                                gradient_accumulation_steps=1 if w.auto else w.accum, learning_rate=ADAMW["lr"],
                                weight_decay=ADAMW["weight_decay"], lr_scheduler_type="constant",
                                max_steps=w.warmup + w.steps, logging_steps=math.gcd(w.warmup, w.window),
                                mixed_precision=precision, dataloader_num_workers=str(w.workers),
                                auto_find_batch_size=w.auto, max_memory_gib=w.max_memory_gib,
                                total_train_batch_size=w.micro * w.accum if w.auto else 0,
                                torch_compile=w.compile, gradient_checkpointing=w.checkpoint)
        result = run(recipe, config=config)
        lines = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
        marks = {r["step"]: r["elapsed_s"] for r in lines if "elapsed_s" in r and _is_mark(w, r["step"])}
        summary = result.summary
        w.micro, w.accum = summary["per_device_train_batch_size"], summary["gradient_accumulation_steps"]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return _rate(w, marks, summary["effective_batch_size"]), _peak_mib(device), optimizer_settings(result.optimizer)


def run_lightning(w: Workload, precision: str, dataset) -> tuple[float, float]:
    """Lightning's Trainer with the same accumulation, clipping and precision."""
    import lightning as L

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = {}

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = EncoderClassifier(w)

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self.model(batch["input_ids"]), batch["labels"])

        def configure_optimizers(self):
            return _adamw(self, device)

        def on_train_batch_end(self, *_):
            step = self.trainer.global_step
            if _is_mark(w, step) and step not in times:
                _sync(device)
                times[step] = time.perf_counter()

    trainer = L.Trainer(max_steps=w.warmup + w.steps, accumulate_grad_batches=w.accum, gradient_clip_val=1.0,
                        precision={"no": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}[precision],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1)
    trainer.fit(Module(), _loader(w, dataset, device, w.micro))
    return _rate(w, times), _peak_mib(device), optimizer_settings(trainer.optimizers[0])


def run_hf(w: Workload, precision: str, dataset) -> tuple[float, float]:
    """Hugging Face's Trainer with the same accumulation, clipping and precision."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times = {}

    class WithLoss(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = EncoderClassifier(w)

        def forward(self, input_ids, labels):
            logits = self.model(input_ids)
            return {"loss": nn.functional.cross_entropy(logits.float(), labels), "logits": logits}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if _is_mark(w, state.global_step) and state.global_step not in times:
                _sync(device)
                times[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=w.micro,
                                 gradient_accumulation_steps=w.accum, max_steps=w.warmup + w.steps,
                                 learning_rate=ADAMW["lr"], weight_decay=ADAMW["weight_decay"],
                                 lr_scheduler_type="constant", max_grad_norm=1.0,
                                 fp16=precision == "fp16", bf16=precision == "bf16", report_to=[],
                                 save_strategy="no", logging_strategy="no", dataloader_num_workers=w.workers,
                                 dataloader_pin_memory=device.type == "cuda", disable_tqdm=True,
                                 optim="adamw_torch_fused",
                                 use_cpu=device.type != "cuda")
        trainer = Trainer(model=WithLoss(), args=args, train_dataset=dataset, callbacks=[Timer()])
        trainer.train()
    return _rate(w, times), _peak_mib(device), optimizer_settings(trainer.optimizer)


RUNNERS = {"raw": run_raw, "accelerate": run_accelerate, "framework": run_framework, "lightning": run_lightning,
           "hf": run_hf}
REQUIRES = {"lightning": "lightning", "hf": "transformers"}


def _child(args) -> None:
    w = workload_of(args)
    if args.micro:
        w.micro, w.accum = args.micro, args.accum or 1
    w.auto, w.max_memory_gib, w.compile = args.auto, args.max_memory_gib or 0.0, args.compiled
    w.checkpoint = args.checkpointed
    dataset = SyntheticTokens(w, (w.warmup + w.steps + 2) * w.micro * w.accum)
    _take_rss_baseline(args.peer)
    samples_per_s, peak, optimizer = RUNNERS[args.peer](w, args.precision, dataset)
    peer = args.peer + ("+compile" if w.compile else "") + ("+ckpt" if w.checkpoint else "")
    print("RESULT " + json.dumps({"peer": peer, "precision": args.precision, "micro": w.micro,
                                  "accum": w.accum, "samples_per_s": samples_per_s, "peak_mib": peak,
                                  "optimizer": optimizer}), flush=True)


def _run_child(peer: str, precision: str, size_flags: list[str], *extra: str) -> dict | None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, __file__, "--peer", peer, "--precision", precision, *size_flags, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    rows = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not rows:
        print(f"{peer} {precision} {' '.join(extra)} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return rows[0]


def _run_children(args, jobs: list[tuple[str, str, list[str]]]) -> list[dict | None]:
    """Each (peer, precision, extra flags) in its own process, one after another (timings are only comparable
    alone on the machine); with --smoke, whose timings are not read, two at a time."""
    if not args.smoke:
        return [_run_child(peer, precision, _size_flags(args), *extra) for peer, precision, extra in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda job: _run_child(job[0], job[1], _size_flags(args), *job[2]), jobs))


def _auto_batch_check(args) -> None:
    """Effective batch 256 in fp16: unconstrained 256 x 1 vs automatic micro-batching under a memory cap."""
    cuda = torch.cuda.is_available()
    precision = "fp16" if cuda else "no"
    big = "64" if args.quick else "256"
    args.max_memory_gib = args.max_memory_gib or 3.0
    checks = [("unconstrained", ["--micro", big, "--accum", "1"]),
              (f"auto, cap {args.max_memory_gib:g} GiB" if cuda else "auto, no cap (CPU)",
               ["--micro", big, "--accum", "1", "--auto"]
               + (["--max_memory_gib", str(args.max_memory_gib)] if cuda else [])),
              (f"auto + checkpointing, cap {args.max_memory_gib:g} GiB" if cuda
               else "auto + checkpointing, no cap (CPU)",
               ["--micro", big, "--accum", "1", "--auto", "--checkpointed"]
               + (["--max_memory_gib", str(args.max_memory_gib)] if cuda else []))]
    found = _run_children(args, [("framework", precision, extra) for _, extra in checks])
    rows = [{**row, "peer": f"framework ({label})"} for (label, _), row in zip(checks, found) if row]
    print(f"{'run':<34}{'precision':<11}{'micro x accum':<15}{'samples/s':>11}{'peak MiB':>11}")
    for row in rows:
        print(f"{row['peer']:<34}{row['precision']:<11}{str(row['micro']) + ' x ' + str(row['accum']):<15}"
              f"{row['samples_per_s']:>11.1f}{row['peak_mib']:>11.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")


def workload_flops_per_sample(w: Workload) -> float:
    """The workload's model FLOPs per training sample (forward + backward), counted on the CPU once."""
    from framework.train.flops import training_flops_per_sample
    from framework.train.losses import classification_loss

    torch.manual_seed(0)
    data = SyntheticTokens(w, 2)
    batch = {"input_ids": data.ids, "labels": data.labels}
    return training_flops_per_sample(EncoderClassifier(w), batch, classification_loss())


def summarize(runs: list[dict]) -> dict:
    """One table row from a peer's repeated runs: median samples/s and peak memory, and the spread
    (max - min) / median of samples/s; every run's rate is kept in `runs_samples_per_s`."""
    import statistics

    rates = [r["samples_per_s"] for r in runs]
    median = statistics.median(rates)
    return {**runs[0], "samples_per_s": median, "runs_samples_per_s": rates,
            "spread": (max(rates) - min(rates)) / median, "peak_mib": statistics.median(r["peak_mib"] for r in runs)}


def compare(row: dict, raw: dict | None) -> None:
    """Add the ratios to the raw loop and a verdict: a ratio counts only where it exceeds both spreads."""
    if raw is None:
        row.update(ratio_to_raw=float("nan"), peak_ratio_to_raw=float("nan"), verdict="no raw row")
        return
    row["ratio_to_raw"] = row["samples_per_s"] / raw["samples_per_s"]
    row["peak_ratio_to_raw"] = row["peak_mib"] / raw["peak_mib"] if raw["peak_mib"] else float("nan")
    noise = max(row["spread"], raw["spread"])
    if row is raw:
        row["verdict"] = "reference"
    elif abs(row["ratio_to_raw"] - 1) <= noise:
        row["verdict"] = "within spread"
    else:
        row["verdict"] = "faster" if row["ratio_to_raw"] > 1 else "slower"


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    """Run every (peer, precision) in its own process, print a table with ratios to raw, write --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CPU-sized workload (under 3 minutes on 2 cores)")
    parser.add_argument("--smoke", action="store_true",
                        help="the --quick model for 20 timed steps, to check the script and its rows (the tests); no timing "
                             "worth reading")
    parser.add_argument("--out", help="write {'rows': [...]} JSON here")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ", ".join(PEERS))
    parser.add_argument("--precisions", help="comma list of no, fp16, bf16 (default: no,fp16 on CUDA, no on CPU)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternate the peers this many times; the table shows medians and spreads (default 5)")
    parser.add_argument("--auto_batch_check", action="store_true",
                        help="instead: the framework at effective batch 256 (or 64 with --quick), unconstrained "
                             "(256 x 1) against --auto_find_batch_size under --max_memory_gib")
    parser.add_argument("--max_memory_gib", type=float, help="the cap for --auto_batch_check (CUDA; default 3)")
    parser.add_argument("--compile", nargs="?", const=",".join(COMPILABLE), default="",
                        help="also time these peers (a comma list; alone: " + ", ".join(COMPILABLE) + ") under "
                             "torch.compile, each against raw+compile")
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--micro", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--accum", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--auto", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.quick = args.quick or args.smoke
    if args.peer:
        return _child(args)
    if args.auto_batch_check:
        return _auto_batch_check(args)

    cuda = torch.cuda.is_available()
    precisions = (args.precisions or ("no,fp16" if cuda else "no")).split(",")
    peers = [p for p in args.peers.split(",") if p not in REQUIRES or _installed(REQUIRES[p])]
    skipped = [p for p in args.peers.split(",") if p not in peers]
    compiled = [p for p in args.compile.split(",") if p]
    unknown = [p for p in compiled if p not in COMPILABLE]
    if unknown:
        parser.error(f"--compile {','.join(unknown)}: not a compilable peer (allowed: {', '.join(COMPILABLE)})")
    if compiled and "raw" not in compiled:
        compiled.insert(0, "raw")  # what every compiled row is compared with
    runs = ([(peer, []) for peer in peers] + [(peer, ["--compiled"]) for peer in peers if peer in compiled]
            + [("framework", ["--checkpointed"])] * ("framework" in peers))
    runs_of: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        jobs = [(peer, precision, extra) for precision in precisions for peer, extra in runs]
        for (peer, precision, extra), row in zip(jobs, _run_children(args, jobs)):
            if row:
                runs_of.setdefault((row["peer"], precision), []).append(row)
        if args.out:  # what a time limit cutting the later repeats would otherwise lose
            Path(args.out + ".partial").write_text(json.dumps({"runs": list(runs_of.values())}, indent=2) + "\n")
    settings = {json.dumps(r["optimizer"], sort_keys=True) for rs in runs_of.values() for r in rs}
    if len(settings) > 1:
        raise SystemExit("the peers' optimizers differ, the comparison would not be fair: " + "; ".join(settings))
    rows = {key: summarize(rs) for key, rs in runs_of.items()}
    flops = workload_flops_per_sample(workload_of(args))
    for row in rows.values():
        row["tflops_per_s"] = row["samples_per_s"] * flops / 1e12
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}; "
          f"workload: {'smoke' if args.smoke else 'quick' if args.quick else 'full'}; "
          f"repeats: {args.repeats} (alternating); "
          f"optimizer: {settings.pop() if settings else '-'}")
    print(f"model FLOPs per sample (forward + backward): {flops:.4g}")
    print(f"{'peer':<20}{'precision':<11}{'micro x accum':<15}{'median/s':>10}{'TFLOP/s':>9}{'spread':>8}"
          f"{'x base':>8}  {'':<14}{'peak MiB':>9}{'mem x base':>11}  base")
    for (peer, precision), row in rows.items():
        # compiled peers are compared with the compiled raw loop, eager ones with the eager raw loop, and
        # the checkpointed framework with the framework without checkpointing
        base = "framework" if peer == "framework+ckpt" else "raw+compile" if peer.endswith("+compile") else "raw"
        compare(row, rows.get((base, precision)))
        row["compared_with"] = base
        print(f"{peer:<20}{precision:<11}{str(row['micro']) + ' x ' + str(row['accum']):<15}"
              f"{row['samples_per_s']:>10.1f}{row['tflops_per_s']:>9.3g}{row['spread']:>8.1%}"
              f"{row['ratio_to_raw']:>8.3f}  {row['verdict']:<14}{row['peak_mib']:>9.0f}"
              f"{row['peak_ratio_to_raw']:>11.3f}  {base}")
    rows = list(rows.values())
    if skipped:
        print("not installed, skipped: " + ", ".join(skipped))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
