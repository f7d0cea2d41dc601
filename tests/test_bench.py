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
FIELDS = {"peer", "precision", "micro", "accum", "samples_per_s", "peak_mib"}


def run_bench(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "rows.json"
    done = launch([sys.executable, str(BENCH), "--quick", "--repeats", "1", "--out", str(out), *args], timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


@pytest.mark.slow
def test_peer_table_with_compiled_rows(tmp_path):
    rows = run_bench(tmp_path, "--peers", "raw,framework", "--compile")
    by_peer = {row["peer"]: row for row in rows}
    assert by_peer.keys() == {"raw", "framework", "raw+compile", "framework+compile"}
    for row in rows:
        assert FIELDS <= row.keys()
        assert (row["precision"], row["micro"], row["accum"]) == ("no", 16, 2)
        assert row["samples_per_s"] > 0 and math.isfinite(row["peak_mib"])
    # each row is compared with the raw loop of its own mode
    assert by_peer["raw"]["ratio_to_raw"] == 1.0 and by_peer["raw+compile"]["ratio_to_raw"] == 1.0
    assert by_peer["framework+compile"]["ratio_to_raw"] == pytest.approx(
        by_peer["framework+compile"]["samples_per_s"] / by_peer["raw+compile"]["samples_per_s"])


@pytest.mark.slow
def test_auto_batch_check_keeps_the_effective_batch(tmp_path):
    rows = run_bench(tmp_path, "--auto_batch_check")
    assert [row["peer"] for row in rows] == ["framework (unconstrained)", "framework (auto, no cap (CPU))"]
    for row in rows:
        assert FIELDS <= row.keys()
        assert row["micro"] * row["accum"] == 64  # the quick size of effective batch 256
