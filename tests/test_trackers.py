"""--report_to: Accelerate's trackers receive the same numbers as metrics.jsonl."""

from __future__ import annotations

import pytest

from helpers import read_metrics, run_digits_in_process


def test_tensorboard_gets_the_metrics_jsonl_values(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    assert run_digits_in_process(tmp_path, "--max_steps", "12", "--logging_steps", "4", "--eval_steps", "6",
                                 "--report_to", "tensorboard") == 0
    event_files = list(tmp_path.rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file written"
    scalars = {}
    for file in event_files:
        acc = event_accumulator.EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    records = read_metrics(tmp_path)
    expected_loss = [(r["step"], r["loss"]) for r in records if "loss" in r]
    expected_acc = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    assert [s for s, _ in scalars["loss"]] == [s for s, _ in expected_loss] == [4, 8, 12]
    assert [v for _, v in scalars["loss"]] == pytest.approx([v for _, v in expected_loss], rel=1e-6)
    assert [v for _, v in scalars["eval_accuracy"]] == pytest.approx([v for _, v in expected_acc], rel=1e-6)


def test_missing_tracker_package_is_an_error_not_silence(tmp_path, capsys):
    # Accelerate itself drops a requested tracker whose package is missing, with only a debug log.
    from accelerate.tracking import get_available_trackers

    from framework.core.config import TRACKERS

    installed = {str(t) for t in get_available_trackers()}
    missing = next((t for t in TRACKERS if t not in installed), None)
    if missing is None:
        pytest.skip("every tracker package is installed here")
    assert run_digits_in_process(tmp_path / "out", "--report_to", missing) == 2
    err = capsys.readouterr().err
    assert f"--report_to {missing}: the {missing} package is not installed" in err
    assert not (tmp_path / "out").exists()
