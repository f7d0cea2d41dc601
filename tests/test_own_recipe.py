"""The README's "Write your own recipe" example, run exactly as printed, on 1 and 2 processes, on real data."""

from __future__ import annotations

import re

import pytest
from sklearn.datasets import load_wine
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
