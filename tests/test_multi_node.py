"""Two "nodes" on one machine: two `accelerate launch` processes with --num_machines 2 on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    CONFIGS,
    DIGITS,
    DROPOUT_ARGS,
    REPO,
    assert_same_report,
    free_port,
    max_abs_diff,
    read_json,
    run_digits_in_process,
)


@pytest.mark.slow
def test_two_machine_ranks_on_loopback_form_one_group(tmp_path):
    reference = tmp_path / "one_process"
    assert run_digits_in_process(reference, *DROPOUT_ARGS, "--per_device_train_batch_size", "32") == 0
    out = tmp_path / "two_nodes"
    port = str(free_port())
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1"}
    nodes = [
        subprocess.Popen([accelerate, "launch", "--config_file", str(CONFIGS / "multi_node.yaml"),
                          "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                          "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
                          str(DIGITS), "--output_dir", str(out), *DROPOUT_ARGS, "--per_device_train_batch_size", "16"],
                         cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    assert read_json(out / "summary.json")["world_size"] == 2
    assert_same_report(read_json(out / "report.json"), read_json(reference / "report.json"))
    assert max_abs_diff(reference, out) <= 5e-5
    assert outputs[0][0].count("weighted avg") == 1 and outputs[1][0].count("weighted avg") == 0
