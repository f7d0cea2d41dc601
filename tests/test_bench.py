"""bench/run.py keeps its contract: the rows it writes with --out, for each mode scripts/gpu_check.sh uses.

Speeds are not asserted (that is the benchmark's job, with ratios in one run);
these tests make sure a scarce GPU session is not spent on a broken script.
"""

from __future__ import annotations

import json
import math
import sys

import pytest

from helpers import REPO, launch

BENCH = REPO / "bench" / "run.py"
FIELDS = {"peer", "precision", "micro", "accum", "samples_per_s", "peak_mib", "optimizer"}
PEER_FIELDS = FIELDS | {"runs_samples_per_s", "spread", "ratio_to_raw", "peak_ratio_to_raw", "verdict"}


def run_bench(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "rows.json"
    done = launch([sys.executable, str(BENCH), "--smoke", "--repeats", "1", "--out", str(out), *args], timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


@pytest.fixture(scope="module")
def peer_rows(tmp_path_factory) -> list[dict]:
    """One smoke run of every peer the CPU machine has, and the framework compiled (with raw+compile, its base;
    shared: each child is a process, and a compiled one spends most of its time compiling)."""
    return run_bench(tmp_path_factory.mktemp("bench"), "--peers", "raw,accelerate,framework,hf", "--compile", "framework")


@pytest.mark.slow
def test_peer_table_with_compiled_rows(peer_rows):
    rows = peer_rows
    by_peer = {row["peer"]: row for row in rows}
    assert by_peer.keys() == {"raw", "accelerate", "framework", "hf", "raw+compile", "framework+compile",
                              "framework+ckpt"}
    for row in rows:
        assert PEER_FIELDS <= row.keys()
        assert (row["precision"], row["micro"], row["accum"]) == ("no", 16, 2)
        assert row["samples_per_s"] > 0 and math.isfinite(row["peak_mib"])
    # each row is compared with the raw loop of its own mode
    assert by_peer["raw"]["ratio_to_raw"] == 1.0 and by_peer["raw+compile"]["ratio_to_raw"] == 1.0
    for peer, raw in [("accelerate", "raw"), ("framework", "raw"), ("hf", "raw"),
                      ("framework+compile", "raw+compile")]:
        rate = by_peer[peer]["samples_per_s"] / by_peer[raw]["samples_per_s"]
        assert by_peer[peer]["ratio_to_raw"] == pytest.approx(rate), peer
    # gradient checkpointing is compared with the framework without it; every row has its FLOP rate
    ckpt = by_peer["framework+ckpt"]
    assert ckpt["compared_with"] == "framework" and ckpt["peak_ratio_to_raw"] == pytest.approx(
        ckpt["peak_mib"] / by_peer["framework"]["peak_mib"])
    flops = {row["tflops_per_s"] * 1e12 / row["samples_per_s"] for row in rows}
    assert len({round(f) for f in flops}) == 1 and flops.pop() > 0  # one workload, one FLOP count


@pytest.mark.slow
def test_auto_batch_check_keeps_the_effective_batch(tmp_path):
    rows = run_bench(tmp_path, "--auto_batch_check")
    assert [row["peer"] for row in rows] == ["framework (unconstrained)", "framework (auto, no cap (CPU))",
                                             "framework (auto + checkpointing, no cap (CPU))"]
    for row in rows:
        assert FIELDS <= row.keys()
        assert row["micro"] * row["accum"] == 64  # the quick size of effective batch 256


@pytest.mark.slow
def test_every_peer_runs_the_same_optimizer(peer_rows):
    rows = peer_rows
    assert {row["peer"] for row in rows} >= {"raw", "accelerate", "framework", "hf", "framework+ckpt"}
    settings = [row["optimizer"] for row in rows]
    assert all(s == settings[0] for s in settings), settings
    assert settings[0]["type"] == "AdamW" and settings[0]["lr"] == 1e-4 and settings[0]["weight_decay"] == 0.0
    assert settings[0]["fused"] is True  # the framework's AdamW kernel on a CPU as on CUDA: every peer's too


def test_optimizer_settings_read_every_group():
    sys.path.insert(0, str(REPO / "bench"))
    import torch
    from run import optimizer_settings

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    same = torch.optim.AdamW([{"params": a.parameters()}, {"params": b.parameters()}], lr=1e-4, weight_decay=0.0)
    assert optimizer_settings(same)["weight_decay"] == 0.0
    differing = torch.optim.AdamW([{"params": a.parameters()}, {"params": b.parameters(), "weight_decay": 0.0}],
                                  lr=1e-4)  # the first group keeps AdamW's default 0.01
    with pytest.raises(SystemExit, match="different settings"):
        optimizer_settings(differing)


def test_median_spread_and_no_ratio_claimed_within_the_spread():
    sys.path.insert(0, str(REPO / "bench"))
    from run import compare, summarize

    def runs(*rates):
        return [{"peer": "p", "samples_per_s": r, "peak_mib": 10.0} for r in rates]

    raw = summarize(runs(100, 104, 96, 101, 99))
    assert raw["samples_per_s"] == 100 and raw["spread"] == pytest.approx(0.08)
    close, far = summarize(runs(103, 102, 105, 104, 103)), summarize(runs(120, 121, 119, 120, 122))
    for row in (raw, close, far):
        compare(row, raw)
    assert (raw["verdict"], close["verdict"], far["verdict"]) == ("reference", "within spread", "faster")
    assert far["ratio_to_raw"] == pytest.approx(1.2)


def test_small_models_rate_is_the_fastest_window_and_a_verdict_needs_more_than_the_spread():
    sys.path.insert(0, str(REPO / "bench"))
    import small_models

    # 10 steps of 32 samples in 0.1 s, then an interrupted window (0.5 s), then 0.08 s: the fastest is 4,000/s
    assert small_models.fastest_window([(10, 0.1), (20, 0.2), (30, 0.7), (40, 0.78)], 32) == pytest.approx(4000)
    rows = [{"round": i, "side": "hand-written", "samples_per_s": 900.0, "window_samples_per_s": rate,
             "micro_batch": 32} for i, rate in enumerate((1000.0, 1010.0, 990.0))]
    rows += [{"round": i, "side": "framework", "samples_per_s": 800.0, "window_samples_per_s": rate, "micro_batch": 32,
              "data_wait_share": 0.1} for i, rate in enumerate((800.0, 810.0, 790.0))]
    summary = small_models.summarize(rows, ("hand-written", "framework"))
    assert summary["ratio"] == 0.8 and summary["verdict"] == "framework slower"
    assert summary["overhead_us_per_step"] == pytest.approx(1e6 * 32 * (1 / 800 - 1 / 1000), abs=0.1)  # 8,000 us
    assert summary["ratio_whole_runs"] == pytest.approx(800 / 900, abs=1e-3)
    assert summary["round_ratio_median"] == 0.8 and summary["round_ratio_median_whole_runs"] == pytest.approx(0.889)
    # a machine 1.3x faster for round 2's two runs: the ratio of medians moves, the rounds' own ratios do not
    shifted = [dict(row, window_samples_per_s=row["window_samples_per_s"] * (1.3 if row["round"] == 2 else 1))
               for row in rows]
    shifted[0]["window_samples_per_s"] = 1300.0  # and round 0's hand-written run 1.3x faster alone
    moved = small_models.summarize(shifted, ("hand-written", "framework"))
    assert moved["ratio"] != 0.8 and moved["round_ratio_median"] == pytest.approx(0.8, abs=0.01)
    # the same medians with a 30% spread on one side: no verdict
    rows[0]["window_samples_per_s"] = 1300.0
    assert small_models.summarize(rows, ("hand-written", "framework"))["verdict"] == "within the spread"
    # --paired: both sides of a round ran at once, so the noise is the spread of the rounds' ratios: a machine
    # 30% faster in one round (both sides) still gives a verdict; a ratio that moves by 30% does not
    for row, rate in zip(rows, (1300.0, 1010.0, 990.0, 1040.0, 810.0, 790.0)):
        row["median_window_samples_per_s"] = rate
    paired = small_models.summarize(rows, ("hand-written", "framework"), paired=True)
    assert paired["round_ratios"] == [0.8, 0.802, 0.798] and paired["verdict"] == "framework slower"
    assert paired["overhead_us_per_step"] is None  # two runs sharing the cores: no step time alone
    one_round = [row for row in rows if row["round"] == 0]
    assert small_models.summarize(one_round, ("hand-written", "framework"))["verdict"].startswith("none")
    rows[3]["median_window_samples_per_s"] = 1040.0 * 1.3
    assert small_models.summarize(rows, ("hand-written", "framework"), paired=True)["verdict"] == "within the spread"
