"""The README's "Write your own recipe" steps, followed exactly as printed in a folder outside the repository, on 1
and 2 processes, on real data; and the recipe on a binary task (its own ROC AUC against the report's)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import accelerate_launch, free_port, read_json, readme_blocks, readme_recipe, readme_section


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
def test_the_readme_recipe_reports_roc_auc_from_the_gathered_probabilities(tmp_path, cancer_csv):
    """A binary task: the recipe's own eval_auc (scikit-learn on the probabilities it receives) is the report's
    roc_auc, and 2 processes (16 each) report exactly what 1 process (32) does."""
    from concurrent.futures import ThreadPoolExecutor

    def train(config: str, micro: str):
        return accelerate_launch(config, cancer_csv / "tabular.py", "--train_file", str(cancer_csv / "train.csv"),
                                 "--validation_file", str(cancer_csv / "valid.csv"), "--output_dir",
                                 str(tmp_path / config), "--learning_rate", "3e-3", "--num_train_epochs", "10",
                                 "--mixed_precision", "no", "--per_device_train_batch_size", micro)

    runs = (("cpu.yaml", "32"), ("cpu_2proc.yaml", "16"))
    with ThreadPoolExecutor(2) as pool:  # two independent runs, at once
        results = list(pool.map(lambda run: train(*run), runs))
    reports = []
    for (config, _), result in zip(runs, results):
        out = tmp_path / config
        assert result.returncode == 0, result.stderr[-3000:]
        report = read_json(out / "report.json")
        assert report["extra"]["auc"] == pytest.approx(report["roc_auc"], abs=1e-12) and report["roc_auc"] > 0.95
        assert report["macro avg"]["support"] == 171 and "auc" in result.stdout
        reports.append(report)
    assert reports[0]["extra"]["auc"] == pytest.approx(reports[1]["extra"]["auc"], abs=1e-6)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
