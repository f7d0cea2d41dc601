"""How fast a run stops on SIGTERM in a given phase: start a command in its own process group, send SIGTERM to
the group once a trigger is met, and report the exit code, the seconds until every process of the group is gone,
and the run's `stopped:` line.

    # a few seconds into an evaluation: 3 s after metrics.jsonl logs optimizer step 10
    python bench/stop_timing.py --out OUT --after_step 10 --delay 3 -- \\
        accelerate launch --config_file accelerate_configs/cpu.yaml recipes/image_classification.py \\
        --train_dir SET/valid --validation_dir SET/train --output_dir OUT --eval_steps 10 --max_steps 30
    # during preparation: 2 s after the start
    python bench/stop_timing.py --out OUT --delay 2 -- python recipes/text_classification.py ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def logged_step(out: Path) -> int:
    """The highest optimizer step in out/metrics.jsonl (0 before there is one)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the run's output_dir (watched for metrics.jsonl)")
    parser.add_argument("--after_step", type=int, default=0, help="wait until this optimizer step is logged")
    parser.add_argument("--delay", type=float, default=0.0, help="then wait this many seconds more")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    started = time.monotonic()
    err_path = args.out.parent / f"{args.out.name}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while args.after_step and logged_step(args.out) < args.after_step and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(args.delay)
        if proc.poll() is not None:
            sys.exit(f"the run ended (exit {proc.returncode}) before the signal; see {err_path}")
        os.killpg(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        code = proc.wait()
        while group_alive(proc.pid):
            time.sleep(0.02)
        gone = time.monotonic() - sent
    stopped = [line for line in err_path.read_text().replace("\r", "\n").splitlines() if line.startswith("stopped:")]
    checkpoints = sorted(p.name for p in (args.out / "checkpoints").iterdir()) if (args.out / "checkpoints").is_dir() \
        else []
    print(json.dumps({"signal_at_s": round(sent - started, 1), "exit_code": code, "all_gone_after_s": round(gone, 2),
                      "stopped": stopped[:1], "checkpoints": checkpoints,
                      "output_dir_exists": args.out.exists()}, indent=1))


if __name__ == "__main__":
    main()
