"""The README's "Write your own recipe" example, run exactly as printed, on 1 and 2 processes, on real data."""

from __future__ import annotations

import re

import pytest
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split

from helpers import REPO, accelerate_launch, read_json


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Write your own recipe"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wine")
    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": "label"})
    frame["label"] = [wine.target_names[i] for i in frame["label"]]
    train, valid = train_test_split(frame, test_size=0.3, stratify=frame["label"], random_state=0)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    (folder / "tabular.py").write_text(readme_recipe())
    return folder


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory):
    """scikit-learn's breast cancer data (two classes) as the README recipe's CSV files."""
    folder = tmp_path_factory.mktemp("cancer")
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "label"})
    frame["label"] = [data.target_names[i] for i in frame["label"]]
    train, valid = train_test_split(frame, test_size=0.3, stratify=frame["label"], random_state=0)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    (folder / "tabular.py").write_text(readme_recipe())
    return folder


def test_the_readme_recipe_is_short():
    assert len([line for line in readme_recipe().splitlines() if line.strip()]) <= 50


@pytest.mark.slow
@pytest.mark.parametrize("launch_config,world_size", [("cpu.yaml", 1), ("cpu_2proc.yaml", 2)])
def test_the_readme_recipe_trains_on_one_and_two_processes(tmp_path, wine_csv, launch_config, world_size):
    result = accelerate_launch(launch_config, wine_csv / "tabular.py", "--train_file", str(wine_csv / "train.csv"),
                               "--validation_file", str(wine_csv / "valid.csv"), "--output_dir", str(tmp_path),
                               "--learning_rate", "3e-3", "--num_train_epochs", "20", "--mixed_precision", "no")
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "report.json")
    assert report["accuracy"] >= 0.9 and report["macro avg"]["support"] == 54  # every validation row once
    assert read_json(tmp_path / "summary.json")["world_size"] == world_size
    assert read_json(tmp_path / "labels.json") == ["class_0", "class_1", "class_2"]
    assert result.stdout.count("weighted avg") == 1


@pytest.mark.slow
def test_the_readme_recipe_reports_roc_auc_from_the_gathered_probabilities(tmp_path, cancer_csv):
    """A binary task: the recipe's own eval_auc (scikit-learn on the probabilities it receives) is the report's
    roc_auc, and 2 processes (16 each) report exactly what 1 process (32) does."""
    reports = []
    for config, micro in (("cpu.yaml", "32"), ("cpu_2proc.yaml", "16")):
        out = tmp_path / config
        result = accelerate_launch(config, cancer_csv / "tabular.py", "--train_file", str(cancer_csv / "train.csv"),
                                   "--validation_file", str(cancer_csv / "valid.csv"), "--output_dir", str(out),
                                   "--learning_rate", "3e-3", "--num_train_epochs", "10", "--mixed_precision", "no",
                                   "--per_device_train_batch_size", micro)
        assert result.returncode == 0, result.stderr[-3000:]
        report = read_json(out / "report.json")
        assert report["extra"]["auc"] == pytest.approx(report["roc_auc"], abs=1e-12) and report["roc_auc"] > 0.95
        assert report["macro avg"]["support"] == 171 and "auc" in result.stdout
        reports.append(report)
    assert reports[0]["extra"]["auc"] == pytest.approx(reports[1]["extra"]["auc"], abs=1e-6)
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
