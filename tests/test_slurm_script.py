"""scripts/slurm/train.sbatch on one machine: SLURM's srun/scontrol stand-ins start two "nodes" on loopback.

SLURM itself is not available here; the stand-ins do what the script relies on (srun runs the task
once per node with SLURM_NODEID set; scontrol lists the allocation's hosts), so the script's own
wiring (rendezvous host, machine ranks, process count, argument passing) is what is tested.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port, read_json

# srun: one task per node, and (as the real srun does) signals it receives passed on to every task.
SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
trap 'kill -USR1 "${pids[@]}"' USR1
trap 'kill -TERM "${pids[@]}"' TERM
for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do
  while true; do wait "$pid" && s=0 || s=$?; kill -0 "$pid" 2>/dev/null || break; done
  [ "$s" = 0 ] || status=1
done
exit $status
"""
# scontrol: the allocation's hosts, and `requeue` recorded in a file.
SCONTROL = """#!/bin/bash
if [ "$1" = requeue ]; then echo "requeue $2" >> "$REQUEUE_LOG"; exit 0; fi
[ "$1 $2" = "show hostnames" ] || exit 2
echo 127.0.0.1
echo 127.0.0.1
"""


def _slurm_env(tmp_path: Path) -> dict:
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    port = free_port()
    return {**os.environ, "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
            "GPUS_PER_NODE": "1", "MAIN_PORT": str(port), "HF_DATASETS_OFFLINE": "1",
            "REQUEUE_LOG": str(tmp_path / "requeued")}


@pytest.mark.slow
def test_sbatch_script_runs_two_nodes(tmp_path):
    env = _slurm_env(tmp_path)
    port = env["MAIN_PORT"]
    out = tmp_path / "run"
    result = subprocess.run(["bash", "scripts/slurm/train.sbatch", "--output_dir", str(out), "--max_steps", "10",
                             "--mixed_precision", "no"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"nodes 2 x 1 processes = 2; rendezvous 127.0.0.1:{port}" in result.stdout
    summary = read_json(out / "summary.json")
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 10


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_the_requeued_job_resumes(tmp_path):
    env = _slurm_env(tmp_path)
    out = tmp_path / "run"
    command = ["bash", "scripts/slurm/train.sbatch", "--output_dir", str(out), "--num_train_epochs", "4",
               "--mixed_precision", "no", "--logging_steps", "5"]
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _trained_past(out, 20) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the job ended before the signal"
    job.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` sends to the batch shell
    stdout, stderr = job.communicate(timeout=90)
    assert job.returncode == 0, stderr[-3000:]
    assert "requeueing job 4242" in stdout
    assert (tmp_path / "requeued").read_text() == "requeue 4242\n"
    assert not (out / "summary.json").exists()
    [checkpoint] = (out / "checkpoints").iterdir()
    step = read_json(checkpoint / "state.json")["state"]["step"]

    # SLURM starts the requeued job with the same script and arguments.
    requeued = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
                              stdin=subprocess.DEVNULL)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"resumed from {checkpoint} at optimizer step {step}" in requeued.stdout
    summary = read_json(out / "summary.json")
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 4 * 23


def _trained_past(out: Path, step: int) -> bool:
    try:
        return any(json.loads(line).get("step", 0) >= step for line in (out / "metrics.jsonl").read_text().splitlines())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
