"""Per-process memory of FSDP against DDP on 2 processes, and the time to save and load a sharded checkpoint against
a whole one, for a model whose training state dominates (the text recipe's encoder at about 100M parameters).

    python bench/fsdp_memory.py                      # DDP, FSDP, FSDP + gradient checkpointing; fp32, CPU
    python bench/fsdp_memory.py --d_model 512        # a smaller model (quicker)

Each mode is one `accelerate launch` on 2 processes (cpu_2proc.yaml, fsdp.yaml) running this file's `--child` part:
the encoder and AdamW prepared by the framework's Accelerator (framework.core.runtime.build_accelerator, FSDP2 on
gloo under fsdp.yaml), a few optimizer steps on random tokens, then one checkpoint written and read back with
framework.io.checkpoint (whole weights and optimizer from the main process under DDP; each process its own shard
under FSDP). Every process reports its peak RSS after the steps and the RSS before the model was built, so the
table shows what the training state costs per process against the expected share: weights + gradients + the two
AdamW moments = 16 bytes per parameter in fp32, all of it per process under DDP, 1/N of it under FSDP (plus the
layers gathered whole for their forward and backward). A bench, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"ddp": (["--config_file", "accelerate_configs/cpu_2proc.yaml"], False),
         "fsdp": (["--config_file", "accelerate_configs/fsdp.yaml", "--num_processes", "2"], False),
         "fsdp+ckpt": (["--config_file", "accelerate_configs/fsdp.yaml", "--num_processes", "2"], True)}
VOCAB, CLASSES, LENGTH = 8000, 4, 64


def _rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    """One process of one mode: build, train a few steps, checkpoint, load; write this rank's figures."""
    sys.path.insert(0, str(REPO / "recipes"))
    import torch

    from framework import TrainingConfig
    from framework.core.runtime import build_accelerator
    from framework.core.sharding import wrap_blocks_not_containers
    from framework.io.checkpoint import load_checkpoint, save_checkpoint
    from framework.io.weights import bare_model
    from framework.train.activation_checkpointing import enable_gradient_checkpointing
    from framework.train.state import TrainState

    from text.models import TextEncoder

    out = Path(args.out_dir)
    accelerator, _ = build_accelerator(TrainingConfig(output_dir=str(out), mixed_precision="no", seed=0))
    before_model = _current_rss_mib()
    model = TextEncoder(VOCAB, CLASSES, d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads,
                        max_length=LENGTH, dropout=0.1)
    parameters = sum(p.numel() for p in model.parameters())
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    wrap_blocks_not_containers(accelerator, model)  # as framework.runner does before preparing
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(accelerator.process_index)
    step_times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        ids = torch.randint(3, VOCAB, (args.batch, LENGTH), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(ids, torch.ones_like(ids)),
                                                 torch.randint(0, CLASSES, (args.batch,), generator=generator))
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - start)
    peak = _rss_mib()
    state = TrainState(step=args.steps)
    identity = {"effective_batch": args.batch * accelerator.num_processes, "seed": 0}
    accelerator.wait_for_everyone()
    start = time.perf_counter()
    path = save_checkpoint(accelerator, out, model=model, parts={"optimizer": optimizer}, state=state,
                           identity=identity)
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    load_checkpoint(accelerator, path, model=model, parts={"optimizer": optimizer}, identity=identity,
                    state_type=TrainState)
    accelerator.wait_for_everyone()
    load_s = time.perf_counter() - start
    checkpoint_mib = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    (out / f"rank_{accelerator.process_index}.json").write_text(json.dumps({
        "parameters": parameters, "rss_before_model_mib": before_model, "peak_rss_mib": peak,
        "step_s": sorted(step_times)[len(step_times) // 2], "save_s": save_s, "load_s": load_s,
        "checkpoint_mib": checkpoint_mib, "sharded": type(bare_model(accelerator, model)).__name__}))
    accelerator.end_training()


def run_mode(mode: str, args) -> list[dict]:
    """Launch one mode on 2 processes; returns each rank's figures."""
    launcher, checkpointing = MODES[mode]
    with tempfile.TemporaryDirectory() as scratch:
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", *launcher, "--mixed_precision", "no",
                   __file__, "--child", "--out_dir", scratch, "--d_model", str(args.d_model), "--num_layers",
                   str(args.num_layers), "--num_heads", str(args.num_heads), "--steps", str(args.steps), "--batch",
                   str(args.batch)] + (["--gradient_checkpointing"] if checkpointing else [])
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"error: {mode} exited {done.returncode}:\n{done.stderr[-3000:]}")
        return [json.loads((Path(scratch) / f"rank_{rank}.json").read_text()) for rank in (0, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out_dir", help=argparse.SUPPRESS)
    parser.add_argument("--gradient_checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default=",".join(MODES), help="comma list of " + ", ".join(MODES))
    parser.add_argument("--d_model", type=int, default=1024)
    parser.add_argument("--num_layers", type=int, default=8)
    parser.add_argument("--num_heads", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps before the checkpoint (default 3)")
    parser.add_argument("--batch", type=int, default=4, help="sequences of 64 tokens per process and step")
    parser.add_argument("--out", help="write the rows as JSON to this file")
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for mode in args.modes.split(","):
        if mode not in MODES:
            raise SystemExit(f"error: --modes: unknown mode {mode!r} (known: {', '.join(MODES)})")
        ranks = run_mode(mode, args)
        state_mib = 16 * ranks[0]["parameters"] / 2**20  # fp32 weights, gradients, AdamW's two moments
        expected = state_mib / (2 if mode.startswith("fsdp") else 1)
        rows.append({"mode": mode, "parameters": ranks[0]["parameters"], "expected_state_mib": expected,
                     "peak_rss_mib": [r["peak_rss_mib"] for r in ranks],
                     "above_start_mib": [r["peak_rss_mib"] - r["rss_before_model_mib"] for r in ranks],
                     "step_s": max(r["step_s"] for r in ranks), "save_s": max(r["save_s"] for r in ranks),
                     "load_s": max(r["load_s"] for r in ranks), "checkpoint_mib": ranks[0]["checkpoint_mib"]})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'mode':<10} {'params':>7} {'expected':>9} {'peak RSS rank 0/1':>18} {'above start 0/1':>16} "
          f"{'step s':>7} {'save s':>7} {'load s':>7} {'ckpt MiB':>9}")
    for r in rows:
        print(f"{r['mode']:<10} {r['parameters'] / 1e6:>6.1f}M {r['expected_state_mib']:>8.0f}M "
              f"{r['peak_rss_mib'][0]:>8.0f} / {r['peak_rss_mib'][1]:<7.0f} {r['above_start_mib'][0]:>7.0f} / "
              f"{r['above_start_mib'][1]:<6.0f} {r['step_s']:>7.2f} {r['save_s']:>7.2f} {r['load_s']:>7.2f} "
              f"{r['checkpoint_mib']:>9.0f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
