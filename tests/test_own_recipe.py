"""The README's "Write your own recipe" steps, followed exactly as printed in a folder outside the repository, on 1
and 2 processes, on real data; and the recipe on a binary task (its own ROC AUC against the report's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    free_port,
    read_json,
    readme_blocks,
    readme_recipe,
    readme_section,
    run_script_in_group,
    run_script_in_process,
)


def test_the_readme_recipe_is_short_and_imports_only_the_public_api():
    assert len([line for line in readme_recipe().splitlines() if line.strip()]) <= 50
    for block in readme_blocks("python"):
        assert not re.search(r"(from|import) framework\.", block), block


@pytest.mark.slow
def test_the_readme_steps_as_written_reach_the_stated_accuracy_on_one_and_two_processes(tmp_path):
    folder = tmp_path / "elsewhere"  # not the repository: no launcher config or relative path to lean on
    folder.mkdir()
    make_data = next(block for block in readme_blocks("python") if "to_csv" in block)
    (folder / re.search(r'"""(\w+\.py)', make_data).group(1)).write_text(make_data)
    (folder / "tabular.py").write_text(readme_recipe())
    commands = [line for line in readme_blocks("bash")[0].splitlines() if line.strip()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_DATASETS_OFFLINE": "1",
           "PET_MASTER_PORT": str(free_port())}  # torchrun's --master_port, so parallel launches do not collide
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True,
                                timeout=300, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, (command, result.stderr[-3000:])
    stated = float(re.search(r"an accuracy of at least (0\.\d+)", readme_section()).group(1))
    reports = []
    for out, world_size in (("outputs/wine_1", 1), ("outputs/wine_2", 2)):
        assert f"--output_dir {out}" in " ".join(commands)
        report = read_json(folder / out / "report.json")
        assert report["accuracy"] >= stated and report["macro avg"]["support"] == 54  # every validation row once
        assert read_json(folder / out / "summary.json")["world_size"] == world_size
        assert read_json(folder / out / "labels.json") == ["class_0", "class_1", "class_2"]
        reports.append(report)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]


@pytest.mark.slow
def test_the_readme_recipe_reports_roc_auc_from_the_gathered_probabilities(tmp_path, cancer_csv, capfd):
    """A binary task: the recipe's own eval_auc (scikit-learn on the probabilities it receives) is the report's
    roc_auc, and 2 processes (16 each, a forked gloo group) report exactly what 1 process (32, this one) does."""
    args = ["--train_file", str(cancer_csv / "train.csv"), "--validation_file", str(cancer_csv / "valid.csv"),
            "--learning_rate", "3e-3", "--num_train_epochs", "10", "--mixed_precision", "no"]
    recipe = cancer_csv / "tabular.py"
    reports = []
    for name, micro in (("one", "32"), ("two", "16")):
        capfd.readouterr()
        if name == "one":
            assert run_script_in_process(recipe, *args, "--per_device_train_batch_size", micro, "--output_dir",
                                         str(tmp_path / name)) == 0
        else:
            run_script_in_group(recipe, *args, "--per_device_train_batch_size", micro, "--output_dir",
                                str(tmp_path / name))
        report = read_json(tmp_path / name / "report.json")
        assert report["extra"]["auc"] == pytest.approx(report["roc_auc"], abs=1e-12) and report["roc_auc"] > 0.95
        assert report["macro avg"]["support"] == 171 and "auc" in capfd.readouterr().out
        reports.append(report)
    assert read_json(tmp_path / "two" / "summary.json")["world_size"] == 2
    assert reports[0]["extra"]["auc"] == pytest.approx(reports[1]["extra"]["auc"], abs=1e-6)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
