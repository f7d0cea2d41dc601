"""No silent hangs: with --ddp_timeout a stalled process ends the job with one `error:` line (exit code 5 on the
waiting process) within the timeout plus the launcher's shutdown grace; a process that dies likewise, at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import CONFIGS, REPO, accelerate_launch, free_port

STALLING_RECIPE = '''
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import torch
from framework import TrainingConfig, run_main
from framework import Recipe, RecipeData, run


class Stalling(torch.utils.data.Dataset):
    """Rank 1 stalls (or dies) at its 20th sample read: in its data loader, in the second epoch's first steps."""

    def __init__(self, stall):
        g = torch.Generator().manual_seed(0)
        self.x, self.y, self.reads, self.stall = torch.randn(64, 4, generator=g), torch.arange(64) % 2, 0, stall

    def __len__(self):
        return 64

    def __getitem__(self, i):
        self.reads += 1
        if self.stall and os.environ.get("RANK") == "1" and self.reads == 20:
            if os.environ["STALL_MODE"] == "exit":
                os._exit(1)
            # SIGTERM's default action for the stalled process: the launcher's SIGTERM ends it at once instead
            # of torch's SIGKILL 30 s later (the recipe's stop handler would wait for a step that never comes);
            # what is under test is the waiting process's line and exit code
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(600)
        return {{"x": self.x[i], "labels": self.y[i]}}


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.layer(x)


def build_data(config, trained):
    return RecipeData(["a", "b"], train=Stalling(True), eval=Stalling(False))


if __name__ == "__main__":
    raise SystemExit(run_main(lambda: run(Recipe(TrainingConfig, build_data, lambda c, d: Linear()), sys.argv[1:])))
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode,expected", [
    ("sleep", "error: waited --ddp_timeout 5 s for another process in a collective ("),
    ("exit", "error: another process left the job during a collective ("),
])
def test_a_stalled_or_dead_process_ends_the_job_with_one_line(tmp_path, monkeypatch, mode, expected):
    script = tmp_path / "stalling.py"
    script.write_text(STALLING_RECIPE.format(repo=str(REPO)))
    monkeypatch.setenv("STALL_MODE", mode)
    started = time.monotonic()
    result = accelerate_launch("cpu_2proc.yaml", script, "--output_dir", str(tmp_path / "out"), "--ddp_timeout", "5",
                               "--per_device_train_batch_size", "4", "--max_steps", "20", "--mixed_precision", "no",
                               timeout=150)
    took = time.monotonic() - started
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), result.stderr[-3000:]
    if mode == "sleep":  # the waiting process's code, in the launcher's failure table (a dead peer is the root cause)
        assert "exitcode  : 5" in result.stderr
    # the timeout, then torch's elastic agent stops the stalled process (SIGTERM); start-up
    assert took < 5 + 60, took



@pytest.mark.slow
def test_a_stalled_process_on_another_node_ends_both_nodes(tmp_path):
    """Two "nodes" on loopback, one process each; node 1's process stalls in its data loader. Node 0's process
    times out in the gradient all-reduce and its launcher ends; node 1's launcher is not told, so its stalled
    process ends when the job's rendezvous store stops answering (framework.core.job_watch)."""
    script = tmp_path / "stalling.py"
    script.write_text(STALLING_RECIPE.format(repo=str(REPO)))
    port = str(free_port())
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "STALL_MODE": "sleep"}
    started = time.monotonic()
    nodes = [subprocess.Popen([accelerate, "launch", "--config_file", str(CONFIGS / "multi_node.yaml"),
                               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                               "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                               str(script), "--output_dir", str(tmp_path / "out"), "--ddp_timeout", "5",
                               "--per_device_train_batch_size", "4", "--max_steps", "20", "--mixed_precision", "no"],
                              cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for rank in (0, 1)]
    finished = []
    try:
        for node in nodes:
            _, stderr = node.communicate(timeout=200)
            finished.append((node.returncode, stderr, time.monotonic() - started))
    finally:  # a hang must not leave the stalled process behind
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    print("seconds until each node's launcher ended:", [round(took, 1) for *_, took in finished])
    expected = ("error: waited --ddp_timeout 5 s for another process in a collective (",
                "error: the launcher of another node has ended (the job's rendezvous store at 127.0.0.1:")
    for (code, stderr, took), start in zip(finished, expected):
        assert code != 0
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(start), stderr[-3000:]
        assert took < 5 + 30 + 60, took  # the timeout, a launcher's shutdown, start-up; not the 600 s stall
    assert "exitcode  : 5" in finished[1][1]  # node 1's launcher reports its process's code


@pytest.mark.parametrize("env,watched", [
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}, True),
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"}, False),  # one node
    # a store hosted by rank 0's process (not a launcher that outlives the workers): rank 0 may end first
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "False"}, False),
    ({"WORLD_SIZE": "1"}, False),
])
def test_only_workers_of_a_multi_node_launch_watch_the_other_nodes(monkeypatch, env, watched):
    from framework.core.job_watch import other_nodes_watched

    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_USE_AGENT_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert other_nodes_watched() is watched


def test_the_store_check_tells_a_listening_port_from_a_closed_one():
    from framework.core.job_watch import store_answers

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert store_answers("127.0.0.1", port)
    assert not store_answers("127.0.0.1", port)  # closed: refused at once
