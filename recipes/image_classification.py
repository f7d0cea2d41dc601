"""Image classification: a Hugging Face image dataset or a local folder per class, a small ResNet.

The network normalizes with GroupNorm, which looks at one sample at a time, so
accumulated and big-batch training give the same model (BatchNorm would not).
Augmentation (random crop after padding, horizontal flip; `--augment`) uses plain
torch ops and draws from each sample's own generator (seed, epoch, index), so it
keeps training exact on any split, any number of DataLoader workers, and a resume.

    # a local tree: train/<class>/*.png and valid/<class>/*.png
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/image_classification.py \\
        --train_dir data/train --validation_dir data/valid --output_dir outputs/images
    # a Hub dataset on 1 GPU, and on 8 GPUs of one node
    accelerate launch --config_file accelerate_configs/single_gpu.yaml recipes/image_classification.py \\
        --dataset_name cifar10 --output_dir outputs/cifar10
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/image_classification.py \\
        --dataset_name beans --image_size 64 --per_device_train_batch_size 64
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
from datasets import ClassLabel, Dataset, load_dataset
from torch import nn

from framework import (RunDirectory, TrainingConfig, build_accelerator, build_eval_loader, build_optimizer,
                       build_scheduler, build_train_data, fit, parse_config, run_main, total_optimizer_steps)
from framework.config import flag, require
from framework.data import check_labels
from framework.errors import UserError
from framework.image_files import unreadable_images
from framework.local_data import quiet_datasets


@dataclass
class ImageConfig(TrainingConfig):
    """Hyperparameters of the image recipe."""

    output_dir: str = "outputs/images"
    num_train_epochs: int = 10
    warmup_ratio: float = 0.05
    dataset_name: str = flag("A Hub image dataset, e.g. cifar10 or beans.", default="")
    train_dir: str = flag("A local folder with one sub-folder of images per class (instead of --dataset_name).",
                          default="")
    validation_dir: str = flag("The local evaluation folder, same class sub-folders.", default="")
    image_column: str = flag("The column holding the image; empty: the first image column.", default="")
    label_column: str = flag("The column holding the class.", default="label")
    image_size: int = flag("Images are resized to this square size.", default=32)
    channels: int = flag("Channels of the first stage (then x2, x4).", default=32)
    groups: int = flag("GroupNorm groups (must divide --channels).", default=8)
    dropout: float = flag("Dropout before the classifier head, in [0, 1).", default=0.1)
    augment: str = flag("Training augmentation, a comma list of crop (random crop after 4-pixel padding) and "
                        "flip (horizontal; wrong for orientation-sensitive images such as digits or text), "
                        "or none.", default="crop,flip")
    skip_bad_images: bool = flag("Leave out images that cannot be decoded (counted in the banner and "
                                 "summary.json) instead of stopping before training.", default=False)

    def validate(self) -> None:
        super().validate()
        require("train_dir", bool(self.dataset_name) != bool(self.train_dir), "given, or --dataset_name, but not both")
        require("validation_dir", bool(self.train_dir) == bool(self.validation_dir),
                "given together with --train_dir")
        require("image_size", self.image_size >= 8, "an integer >= 8")
        require("groups", self.groups >= 1 and self.channels % self.groups == 0,
                f"an integer >= 1 that divides --channels ({self.channels})")
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")
        ops = self.augment_ops
        require("augment", ops is not None, f"none or a comma list of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")

    @property
    def augment_ops(self) -> tuple[str, ...] | None:
        """`--augment` as a tuple of transform names (empty for none); None when it names an unknown one."""
        names = tuple(n.strip() for n in self.augment.split(",") if n.strip())
        if names in ((), ("none",)):
            return ()
        return names if set(names) <= set(AUGMENTATIONS) else None


AUGMENTATIONS = ("crop", "flip")


def load_splits(config: ImageConfig) -> tuple[Dataset, Dataset]:
    """Raw train and evaluation splits from the Hub or from two image folders."""
    if config.dataset_name:
        data = load_dataset(config.dataset_name)
        evaluation = next((data[s] for s in ("validation", "test") if s in data), None)
        if evaluation is None:
            raise UserError(f"--dataset_name {config.dataset_name!r} has no validation or test split")
        return data["train"], evaluation
    splits = []
    for flag_name, folder in (("--train_dir", config.train_dir), ("--validation_dir", config.validation_dir)):
        try:
            with quiet_datasets():
                splits.append(load_dataset("imagefolder", data_dir=folder, split="train"))
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"{flag_name} {folder!r} holds no class folders of images ({type(err).__name__})") from None
    return splits[0], splits[1]


def image_column_of(dataset: Dataset, wanted: str) -> str:
    """`wanted`, or the first column whose feature is an Image."""
    if wanted:
        if wanted not in dataset.column_names:
            raise UserError(f"--image_column {wanted!r} is not a column ({', '.join(dataset.column_names)})")
        return wanted
    for name, feature in dataset.features.items():
        if type(feature).__name__ == "Image":
            return name
    raise UserError(f"no image column among {', '.join(dataset.column_names)}; set --image_column")


def to_tensor(image, size: int) -> torch.Tensor:
    """A PIL image as a (3, size, size) float tensor in [-1, 1]."""
    array = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def augment(sample: dict, generator: torch.Generator, ops: tuple[str, ...]) -> dict:
    """Random 4-pixel-padded crop and/or horizontal flip of one sample, drawn from its own `generator`."""
    pixels = sample["pixel_values"]
    if "crop" in ops:
        size = pixels.shape[-1]
        padded = nn.functional.pad(pixels, (4, 4, 4, 4), mode="reflect")
        top, left = torch.randint(0, 9, (2,), generator=generator).tolist()
        pixels = padded[:, top:top + size, left:left + size]
    if "flip" in ops and torch.rand((), generator=generator) < 0.5:
        pixels = pixels.flip(-1)
    return {**sample, "pixel_values": pixels}


def transform(image_column: str, label_column: str, size: int) -> Callable[[dict], dict]:
    """A batched `Dataset.set_transform` function producing pixel_values and labels."""
    def apply(batch: dict) -> dict:
        return {"pixel_values": [to_tensor(image, size) for image in batch[image_column]],
                "labels": batch[label_column]}
    return apply


def drop_unreadable(dataset: Dataset, column: str, what: str, skip: bool) -> tuple[Dataset, int]:
    """Decode every image first; stop with one line naming the first bad one, or leave them out with `skip`."""
    bad = unreadable_images(dataset, column)
    if bad and not skip:
        _, name, reason = bad[0]
        raise UserError(f"the {what} has {len(bad)} unreadable image(s), the first {name!r} ({reason}); "
                        f"fix or remove them, or pass --skip_bad_images true to leave them out")
    rows = {row for row, _, _ in bad}
    return (dataset.select([i for i in range(len(dataset)) if i not in rows]) if bad else dataset), len(bad)


def build_data(config: ImageConfig) -> tuple[Dataset, Dataset, list[str], int]:
    """Train and evaluation sets yielding pixel_values and labels, the class names, and how many
    unreadable images were left out (--skip_bad_images)."""
    train, evaluation = load_splits(config)
    column = image_column_of(train, config.image_column)
    train, bad_train = drop_unreadable(train, column, "training data", config.skip_bad_images)
    evaluation, bad_eval = drop_unreadable(evaluation, column, "evaluation data", config.skip_bad_images)
    label = train.features.get(config.label_column)
    if not isinstance(label, ClassLabel):
        raise UserError(f"the training data has no class label column {config.label_column!r} "
                        f"(columns: {', '.join(train.column_names)}; set --label_column)")
    names = list(label.names)
    if isinstance(evaluation.features.get(config.label_column), ClassLabel) and \
            list(evaluation.features[config.label_column].names) != names:
        raise UserError(f"the evaluation classes {evaluation.features[config.label_column].names} differ from "
                        f"the training classes {names}")
    for name, split in (("training data", train), ("evaluation data", evaluation)):
        check_labels(split, len(names), column=config.label_column, name=name)
    train.set_transform(transform(column, config.label_column, config.image_size))
    evaluation.set_transform(transform(column, config.label_column, config.image_size))
    return train, evaluation, names, bad_train + bad_eval


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and GELU, and a shortcut (1x1 when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.GroupNorm(groups, c_out), nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.GroupNorm(groups, c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(groups, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A stem, three residual stages (c, 2c, 4c; the last two halve the resolution), average pooling, a head."""

    def __init__(self, config: ImageConfig, num_classes: int):
        super().__init__()
        c, g = config.channels, config.groups
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, 1, 1, bias=False), nn.GroupNorm(g, c), nn.GELU(),
            ResidualBlock(c, c, 1, g), ResidualBlock(c, 2 * c, 2, g), ResidualBlock(2 * c, 4 * c, 2, g),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(4 * c, num_classes))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build data and model, train, evaluate, write the outputs."""
    config = parse_config(ImageConfig, argv)
    accelerator, precision = build_accelerator(config)
    run_dir = RunDirectory.for_run(config, accelerator)

    with accelerator.main_process_first():  # the main process downloads and caches; the others reuse it
        train_set, eval_set, class_names, skipped = build_data(config)
    ops = config.augment_ops
    train_data = build_train_data(train_set, config, accelerator, augment=partial(augment, ops=ops) if ops else None)
    eval_loader = build_eval_loader(eval_set, config, accelerator)

    model = SmallResNet(config, len(class_names)).to(accelerator.device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_optimizer_steps(config, train_data.plan.windows_per_epoch))
    model, optimizer = accelerator.prepare(model, optimizer)

    fit(accelerator, config, model, optimizer, scheduler, train_data, eval_loader,
        class_names=class_names, precision=precision, run_dir=run_dir,
        data_notes={"skipped_bad_images": skipped} if config.skip_bad_images else None)
    accelerator.end_training()


if __name__ == "__main__":
    raise SystemExit(run_main(main))
