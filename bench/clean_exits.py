"""Repeat short multi-process launches and count how each one exited: every process of a run that succeeded must
end with exit 0, never SIGABRT at teardown (`terminate called without an active exception`, exit -6 or 134).

    python bench/clean_exits.py --runs 200                 # FSDP (fsdp.yaml) and DDP (cpu_2proc.yaml) in turn
    python bench/clean_exits.py --runs 50 --configs fsdp   # one config only

Each run: recipes/digits.py on 2 processes, 10 optimizer steps with a checkpoint after 5 (sharded under FSDP), the
evaluation, the report and the teardown. A repeat loop, not a timed test: a rare teardown abort needs hundreds of
runs to show, which is no suite's job. Prints one line per failure (its exit code and the last lines it printed)
and a table by config; --out writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"fsdp": ["--config_file", str(REPO / "accelerate_configs" / "fsdp.yaml"), "--num_processes", "2"],
           "ddp": ["--config_file", str(REPO / "accelerate_configs" / "cpu_2proc.yaml")]}
RUN_ARGS = ["--max_steps", "10", "--checkpointing_steps", "5", "--mixed_precision", "no"]


def _allow_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def one_run(config: str, out: Path, cores: bool) -> tuple[int, str, float]:
    """Launch one run; returns its exit code, what it printed, and its seconds."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    command = [accelerate, "launch", *CONFIGS[config], str(REPO / "recipes" / "digits.py"), "--output_dir", str(out),
               *RUN_ARGS]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=out.parent, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)},
                          preexec_fn=_allow_core_dumps if cores else None)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="launches in all, the configs in turn (default 200)")
    parser.add_argument("--configs", default="fsdp,ddp", help="comma list of " + ", ".join(CONFIGS))
    parser.add_argument("--out", help="write the table as JSON to this file")
    parser.add_argument("--keep", help="a folder to keep each failed run's output (and core files) in")
    parser.add_argument("--cores", action="store_true",
                        help="let the processes dump core (with the kernel's core_pattern 'core': in --keep)")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or args.runs < 1:
        raise SystemExit(f"error: --configs {args.configs!r} (known: {', '.join(CONFIGS)}) and --runs {args.runs} "
                         f"(at least 1)")
    codes: dict[str, Counter] = {c: Counter() for c in configs}
    seconds: dict[str, float] = Counter()
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.runs):
            config = configs[i % len(configs)]
            workdir = Path(scratch) / f"run_{i}"
            workdir.mkdir()
            code, printed, took = one_run(config, workdir / "out", args.cores)
            codes[config][code] += 1
            seconds[config] += took
            aborted = "terminate called" in printed or "SIGABRT" in printed or code in (-6, 134)
            if code != 0:
                tail = "\n".join(line for line in printed.splitlines() if "terminate" in line or "exitcode" in line)
                print(f"run {i} ({config}): exit {code}{' (SIGABRT)' if aborted else ''}\n{tail}", flush=True)
                if args.keep:
                    (workdir / "printed.txt").write_text(printed)
                    shutil.copytree(workdir, Path(args.keep) / workdir.name, ignore=shutil.ignore_patterns("out"))
            elif (i + 1) % 20 == 0:
                print(f"{i + 1} runs, all exits so far: {dict((c, dict(n)) for c, n in codes.items())}", flush=True)
    table = {c: {"runs": sum(n.values()), "exit_codes": {str(k): v for k, v in sorted(n.items())},
                 "mean_s": round(seconds[c] / max(sum(n.values()), 1), 2)} for c, n in codes.items()}
    print(f"{'config':<6} {'runs':>5} {'exit 0':>7} {'other exits':<30} {'s per run':>9}")
    for config, row in table.items():
        others = {k: v for k, v in row["exit_codes"].items() if k != "0"}
        print(f"{config:<6} {row['runs']:>5} {row['exit_codes'].get('0', 0):>7} {json.dumps(others):<30} "
              f"{row['mean_s']:>9.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
