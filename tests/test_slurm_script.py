"""scripts/slurm/train.sbatch on one machine: SLURM's srun/scontrol stand-ins start two "nodes" on loopback.

SLURM itself is not available here; the stand-ins do what the script relies on (srun runs the task
once per node with SLURM_NODEID set; scontrol lists the allocation's hosts), so the script's own
wiring (rendezvous host, machine ranks, process count, argument passing) is what is tested.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, read_json

SRUN = """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
pids=()
for id in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$id "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || exit 2
echo 127.0.0.1
echo 127.0.0.1
"""


@pytest.mark.slow
def test_sbatch_script_runs_two_nodes(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PATH": f"{shims}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
           "GPUS_PER_NODE": "1", "MAIN_PORT": str(port), "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "run"
    result = subprocess.run(["bash", "scripts/slurm/train.sbatch", "--output_dir", str(out), "--max_steps", "10",
                             "--mixed_precision", "no"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=240, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"nodes 2 x 1 processes = 2; rendezvous 127.0.0.1:{port}" in result.stdout
    summary = read_json(out / "summary.json")
    assert summary["world_size"] == 2 and summary["optimizer_steps"] == 10
