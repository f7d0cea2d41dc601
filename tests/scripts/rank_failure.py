"""The digits recipe with a model that raises on rank 1 after a few steps (a crashing process)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framework.core.errors import run_main  # noqa: E402
from recipes import digits  # noqa: E402


class CrashOnRankOne(digits.DigitsCNN):
    calls = 0

    def forward(self, pixel_values):
        CrashOnRankOne.calls += 1
        if os.environ.get("RANK") == "1" and CrashOnRankOne.calls == 20:
            raise RuntimeError("simulated failure on rank 1")
        return super().forward(pixel_values)


digits.DigitsCNN = CrashOnRankOne

if __name__ == "__main__":
    raise SystemExit(run_main(digits.main))
