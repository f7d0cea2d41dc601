"""No silent hangs: with --ddp_timeout a stalled process ends the job with one `error:` line (exit code 5 on the
waiting process) within the timeout plus the launcher's shutdown grace; a process that dies likewise, at once."""

from __future__ import annotations

import time

import pytest

from helpers import REPO, accelerate_launch

STALLING_RECIPE = '''
import os, sys, time
sys.path.insert(0, {repo!r})
import torch
from framework import TrainingConfig, run_main
from framework.recipe import Recipe, RecipeData, run


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
    # the timeout, then torch's elastic agent stops the stalled process (SIGTERM, SIGKILL 30 s later); start-up
    assert took < 5 + 30 + 60, took
