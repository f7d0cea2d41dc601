"""Runtime: which precision really runs, the process-group guard, the banner."""

from __future__ import annotations

import pytest

from framework.core.errors import UserError
from framework.core.runtime import Precision, check_process_group, format_banner, resolve_precision


@pytest.mark.parametrize("flag,launcher,cuda,requested,effective", [
    (None, None, False, "no", "no"),          # CPU default
    (None, None, True, "fp16", "fp16"),       # CUDA default
    (None, "bf16", True, "bf16", "bf16"),     # launcher config used when no flag
    ("no", "fp16", True, "no", "no"),         # the flag wins over the launcher
    ("bf16", None, False, "bf16", "bf16"),    # bf16 autocast works on CPU
    ("fp16", None, False, "fp16", "fp16"),    # fp16 runs on a CPU too (framework.core.runtime.enable_cpu_fp16)
    (None, "fp16", False, "fp16", "fp16"),
])
def test_resolve_precision(flag, launcher, cuda, requested, effective):
    precision = resolve_precision(flag, launcher, cuda)
    assert (precision.requested, precision.effective) == (requested, effective)
    assert (precision.note is not None) == (requested == "fp16" and not cuda)  # the CPU fp16 speed note


def test_fp16_on_cpu_note_says_what_runs():
    note = resolve_precision("fp16", None, cuda=False).note
    assert "CPU" in note and "float16 autocast and dynamic loss scaling" in note and "bf16" in note


def test_unconnected_processes_are_refused():
    check_process_group(1, 1)
    check_process_group(2, 2)
    with pytest.raises(UserError, match="WORLD_SIZE=2 but the processes did not form one group"):
        check_process_group(2, 1)


def test_banner_states_effective_batch_and_steps():
    banner = format_banner(world_size=2, device="cpu", precision=Precision("fp16", "no", "x"), micro_batch=8,
                           accumulation=4, effective_batch=64, steps_per_epoch=23, total_steps=46, train_samples=1437)
    assert "8 micro-batch x 4 accumulation x 2 processes = 64 samples per optimizer step" in banner
    assert "46 planned" in banner
    assert "no = fp32 (asked for fp16)" in banner


def test_banner_for_an_effective_batch_that_is_not_a_multiple():
    banner = format_banner(world_size=1, device="cpu", precision=Precision("no", "no"), micro_batch=12,
                           accumulation=3, effective_batch=32, steps_per_epoch=45, total_steps=45, train_samples=1437)
    assert "32 samples per optimizer step = 3 micro-batches of at most 12 on each of 1 processes" in banner
