"""--calibrate: temperature scaling fitted on the evaluation split, the same on every process, accuracy unchanged,
saved with the model and used by --model_path and --do_predict."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from framework.evaluate.temperature import GRID, best_temperature, nll_at

from helpers import TEXT, read_json, read_metrics, run_digits_in_process, run_script_in_group


def test_the_nll_at_each_temperature_is_the_cross_entropy_of_the_scaled_logits():
    torch.manual_seed(0)
    logits, labels = torch.randn(20, 7) * 3, torch.randint(0, 7, (20,))
    temperatures = torch.tensor([0.3, 1.0, 2.5])
    expected = torch.stack([torch.nn.functional.cross_entropy(logits / t, labels, reduction="none")
                            for t in temperatures], dim=1)
    torch.testing.assert_close(nll_at(logits, labels, temperatures), expected, rtol=1e-5, atol=1e-6)


def test_the_temperature_of_overconfident_logits_is_found():
    """Labels drawn from softmax(z), the model says 3z: the temperature that undoes it is 3."""
    rng = np.random.default_rng(1)
    z = rng.normal(size=(20000, 5)) * 1.5
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    total = nll_at(torch.tensor(3 * z), torch.tensor(labels), torch.tensor(GRID)).sum(0).numpy()
    assert best_temperature(total) == pytest.approx(3.0, rel=0.05)
    assert 1.0 in np.round(GRID, 12)  # T = 1 is on the grid: the fitted T is never worse than none


def test_a_calibrated_run_keeps_its_predictions_and_lowers_its_log_loss(tmp_path):
    assert run_digits_in_process(tmp_path, "--max_steps", "60", "--mixed_precision", "no", "--calibrate", "true") == 0
    report, summary = read_json(tmp_path / "report.json"), read_json(tmp_path / "summary.json")
    last = [r for r in read_metrics(tmp_path) if "eval_accuracy" in r][-1]  # the evaluation before calibrating
    assert report["accuracy"] == last["eval_accuracy"] and report["macro avg"]["f1-score"] == last["eval_macro_f1"]
    assert report["log_loss"] <= report["before_temperature"]["log_loss"] + 1e-9
    assert report["before_temperature"]["log_loss"] == pytest.approx(last["eval_log_loss"], rel=1e-9)
    saved = read_json(tmp_path / "calibration.json")
    assert saved["temperature"] == report["temperature"] == summary["calibration_temperature"] != 1.0


@pytest.mark.slow
def test_predict_and_model_path_use_the_saved_temperature(tmp_path, text_files):
    """predictions.csv of a calibrated run's model: the same classes as without calibration.json, and each
    score is softmax(logits / T), i.e. the uncalibrated probabilities to the power 1/T, renormalized; also on 2
    processes, where the temperature is fitted the same."""
    data = ["--train_file", str(text_files / "train.csv"), "--validation_file", str(text_files / "valid.csv"),
            "--max_steps", "20", "--baseline", "false", "--mixed_precision", "no"]
    run_script_in_group(TEXT, *data, "--calibrate", "true", "--per_device_train_batch_size", "16", "--output_dir",
                        str(tmp_path / "two"))  # a forked 2-process gloo group
    from framework.core.errors import run_main
    from recipes import text_classification

    assert run_main(lambda: text_classification.main([*data, "--calibrate", "true", "--output_dir",
                                                      str(tmp_path / "run")])) == 0
    temperature = read_json(tmp_path / "run" / "calibration.json")["temperature"]
    assert temperature == pytest.approx(read_json(tmp_path / "two" / "calibration.json")["temperature"], rel=1e-4)
    shutil.copytree(tmp_path / "run", tmp_path / "plain")
    (tmp_path / "plain" / "calibration.json").unlink()
    rows = {}
    for name in ("run", "plain"):
        assert run_main(lambda: text_classification.main([
            "--do_train", "false", "--do_eval", "false", "--do_predict", "true", "--model_path", str(tmp_path / name),
            "--test_file", str(text_files / "valid.csv"), "--output_dir", str(tmp_path / f"predict_{name}")])) == 0
        rows[name] = list(csv.DictReader(open(tmp_path / f"predict_{name}" / "predictions.csv")))
    probability_columns = [c for c in rows["run"][0] if c.startswith("prob_")]
    for calibrated, plain in zip(rows["run"], rows["plain"]):
        assert calibrated["prediction"] == plain["prediction"]
        p = np.array([float(plain[c]) for c in probability_columns]) ** (1 / temperature)
        np.testing.assert_allclose([float(calibrated[c]) for c in probability_columns], p / p.sum(), atol=2e-5)
