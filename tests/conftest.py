"""Shared fixtures: offline datasets, a clean Accelerate state per test, and the GPU marker."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local data only: no usage ping from load_dataset
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import SHAPES, draw_shape, readme_recipe, reset_accelerate, write_text_split  # noqa: E402  (after the environment above)


@pytest.fixture(autouse=True)
def free_launcher_port(monkeypatch):
    """torchrun's rendezvous port (its --master_port, read from PET_MASTER_PORT) free for each test, so that
    launches of tests running at once (pytest-xdist workers) do not collide on 29500."""
    from helpers import free_port

    monkeypatch.setenv("PET_MASTER_PORT", str(free_port()))


@pytest.fixture(autouse=True)
def clean_accelerate_state():
    """Accelerate keeps process-wide singletons; a leftover one breaks the next Accelerator or debug_launcher."""
    reset_accelerate()
    yield
    reset_accelerate()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; run scripts/gpu_check.sh on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text_data")
    write_text_split(folder / "train.csv", 600, seed=1)
    write_text_split(folder / "valid.csv", 150, seed=2)
    return folder




@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    rng = random.Random(0)
    for split, per_class in (("train", 60), ("valid", 20)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for i in range(per_class):
                draw_shape(shape, rng).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory):
    """scikit-learn's breast cancer data (two classes) as the README recipe's CSV files, with the recipe."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    folder = tmp_path_factory.mktemp("cancer")
    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns={"target": "label"})
    frame["label"] = [data.target_names[i] for i in frame["label"]]
    train, valid = train_test_split(frame, test_size=0.3, stratify=frame["label"], random_state=0)
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    (folder / "tabular.py").write_text(readme_recipe())
    return folder

