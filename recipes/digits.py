"""Handwritten digits: scikit-learn's bundled 8x8 images (1797, 10 classes) with a small CNN.

No download. Runs anywhere the launcher config says:

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/digits.py --output_dir outputs/digits
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/digits.py
    torchrun --nproc_per_node 2 recipes/digits.py
    python recipes/digits.py --gradient_accumulation_steps 4 --per_device_train_batch_size 8

The CNN has no batch-dependent layers (no BatchNorm) and only smooth units
(GELU, average pooling), so accumulated and big-batch training give the same
weights up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Array3D, ClassLabel, Dataset, Features
from sklearn.datasets import load_digits
from torch import nn

from framework import KeyedDropout, Recipe, RecipeData, TrainingConfig, check_labels, flag, require, run, run_main


@dataclass
class DigitsConfig(TrainingConfig):
    """Defaults tuned to reach >= 0.95 test accuracy in well under a minute on 2 CPU cores."""

    output_dir: str = "outputs/digits"
    per_device_train_batch_size: int = 32
    learning_rate: float = 3e-3
    num_train_epochs: int = 10
    warmup_ratio: float = 0.05
    dropout: float = flag("Dropout before the classifier head, in [0, 1).", default=0.1)
    channels: int = flag("Channels of the first convolution (the others use twice as many).", default=32)
    test_size: float = flag("Fraction of the 1797 images held out for evaluation.", default=0.2)
    split_seed: int = flag("Seed of the stratified train/test split (fixed, so --seed varies training only).",
                           default=0)

    def validate(self) -> None:
        super().validate()
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")
        require("channels", self.channels >= 1, "an integer >= 1")
        require("test_size", 0.0 < self.test_size < 1.0, "a number in (0, 1)")


def load_splits(config: DigitsConfig) -> tuple[Dataset, Dataset, list[str]]:
    """The digits as a `datasets.Dataset`, split train/test stratified by class with `split_seed`."""
    digits = load_digits()
    names = [str(d) for d in digits.target_names]
    features = Features({"pixel_values": Array3D((1, 8, 8), "float32"), "labels": ClassLabel(names=names)})
    images = (digits.images / 16.0).astype("float32")[:, None]  # scale 0..16 to 0..1, add the channel axis
    dataset = Dataset.from_dict({"pixel_values": images, "labels": digits.target}, features=features)
    split = dataset.train_test_split(test_size=config.test_size, stratify_by_column="labels",
                                     seed=config.split_seed)
    for name in ("train", "test"):
        check_labels(split[name], len(names), name=f"{name} split")
    return split["train"].with_format("torch"), split["test"].with_format("torch"), names


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions with GELU and average pooling, then a linear classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Sequential(nn.Flatten(), KeyedDropout(dropout), nn.Linear(2 * c * 4, num_classes))

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The convolution stack as one block, for --gradient_checkpointing."""
        return [self.features]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def build_data(config: DigitsConfig, trained=None) -> RecipeData:
    """Train on the training split, evaluate on the held-out split; --do_predict predicts the held-out split."""
    train, test, names = load_splits(config)
    return RecipeData(names, train=train, eval=test, test=test)


def build_model(config: DigitsConfig, data: RecipeData) -> nn.Module:
    """The CNN for the data's classes."""
    return DigitsCNN(config.channels, len(data.class_names), config.dropout)


RECIPE = Recipe(DigitsConfig, build_data, build_model, model_flags=("channels",), name="digits")


def main(argv: list[str] | None = None) -> None:
    """Parse flags, then train, evaluate and predict as they say (framework.run)."""
    run(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
