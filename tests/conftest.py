"""Shared fixtures: offline datasets, a clean Accelerate state per test, and the GPU marker."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local data only: no usage ping from load_dataset
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers import reset_accelerate  # noqa: E402  (after the environment above)


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
