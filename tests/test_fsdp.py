"""FSDP2 on a machine without GPUs (framework.core.sharding): accelerate_configs/fsdp.yaml on 2 CPU processes trains
sharded over gloo through Accelerate's own FSDP2 code, and trains the model one plain process trains."""

from __future__ import annotations

import pytest

from helpers import DIGITS, accelerate_launch, max_abs_diff, read_json, run_digits_in_process

STEPS = ["--max_steps", "20", "--mixed_precision", "no", "--seed", "7"]


@pytest.mark.slow
def test_the_fsdp_config_trains_digits_sharded_on_two_cpu_processes_as_one_process_does(tmp_path):
    sharded = tmp_path / "fsdp"
    result = accelerate_launch("fsdp.yaml", DIGITS, "--output_dir", str(sharded), *STEPS,
                               "--per_device_train_batch_size", "16", launcher_args=["--num_processes", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharding FSDP2, parameters sharded over 2 processes" in result.stdout  # the banner
    summary = read_json(sharded / "summary.json")
    assert summary["world_size"] == 2 and summary["sharding"] == "FSDP2, parameters sharded over 2 processes"
    plain = tmp_path / "plain"
    assert run_digits_in_process(plain, *STEPS, "--per_device_train_batch_size", "32") == 0
    assert max_abs_diff(sharded, plain) < 5e-5  # 2 x 16 sharded == 1 x 32, default dropout on
    assert read_json(sharded / "report.json")["accuracy"] == read_json(plain / "report.json")["accuracy"]
