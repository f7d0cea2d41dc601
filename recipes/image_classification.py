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

import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset, Image
from torch import nn

from framework import (
    FlagError,
    KeyedDropout,
    Recipe,
    RecipeData,
    TrainingConfig,
    UserError,
    content_hash,
    flag,
    load_by_content,
    load_hub_splits,
    pixel_logistic_regression,
    require,
    run,
    run_main,
    score,
    to_model_labels,
    training_classes,
    wanted,
)

from image.files import METADATA_FILES, list_image_folder, to_rgb, unreadable_images

CHECKS_FOLDER = "framework-image-checks"  # under datasets' cache folder: the decode checks kept for the next run


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
    test_dir: str = flag("Images to classify with --do_predict: a folder of images, class sub-folders optional "
                         "(with them, a test report too).", default="")
    image_column: str = flag("The column holding the image; empty: the first image column.", default="")
    label_column: str = flag("The column holding the class (multi-label: the label set, from a metadata.csv/jsonl "
                             "beside the images, columns file_name and this one).", default="label")
    image_size: int = flag("Images are resized to this square size.", default=32)
    channels: int = flag("Channels of the first stage (then x2, x4).", default=32)
    groups: int = flag("GroupNorm groups (must divide --channels).", default=8)
    dropout: float = flag("Dropout before the classifier head, in [0, 1).", default=0.1)
    augment: str = flag("Training augmentation, a comma list of crop (random crop after 4-pixel padding) and "
                        "flip (horizontal: for photos of things that look the same mirrored; wrong for digits, "
                        "text, icons), or none.", default="crop")
    baseline: str = flag("Also fit logistic regression on the pixels downscaled to 16x16 on the same split and "
                         "report it beside the network: true, false, or auto (below 50k training images).",
                         default="auto")
    skip_bad_images: bool = flag("Leave out images that cannot be decoded (counted in the banner and "
                                 "summary.json) instead of stopping before training.", default=False)
    overwrite_cache: bool = flag("Decode every image again in the check before training, instead of trusting the "
                                 "check kept for files whose size and modification time are unchanged.", default=False)

    def validate(self) -> None:
        super().validate()
        require("train_dir", not (self.dataset_name and self.train_dir), "given, or --dataset_name, but not both")
        require("train_dir", not self.do_train or bool(self.dataset_name or self.train_dir),
                "given (or --dataset_name) to train")
        require("validation_dir", not self.do_eval or bool(self.dataset_name or self.validation_dir),
                "given (or --dataset_name) to evaluate")
        require("test_dir", not self.do_predict or bool(self.test_dir), "given with --do_predict")
        require("baseline", self.baseline in ("auto", "true", "false"), "auto, true or false")
        require("image_size", self.image_size >= 8, "an integer >= 8")
        require("groups", self.groups >= 1 and self.channels % self.groups == 0,
                f"an integer >= 1 that divides --channels ({self.channels})")
        require("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)")
        ops = self.augment_ops
        require("augment", ops is not None, f"none or a comma list of {', '.join(AUGMENTATIONS)}")

    @property
    def augment_ops(self) -> tuple[str, ...] | None:
        """`--augment` as a tuple of transform names (empty for none); None when it names an unknown one."""
        names = tuple(n.strip() for n in self.augment.split(",") if n.strip())
        if names in ((), ("none",)):
            return ()
        return names if set(names) <= set(AUGMENTATIONS) else None


AUGMENTATIONS = ("crop", "flip")


def load_folder(flag_name: str, folder: str, classes_required: bool = True, reread: bool = False) -> Dataset:
    """A local image folder (class sub-folders give a label column) as a Dataset, in file order: listed by the
    recipe, or by datasets' imagefolder where a metadata file names the labels."""
    listed = list_image_folder(folder, flag_name, classes_required=classes_required)
    if listed is not None:
        return listed
    # The metadata file names the labels: datasets' cache of it must follow its content, not its time.
    metadata = [Path(folder) / name for name in METADATA_FILES if (Path(folder) / name).is_file()]
    try:
        return load_by_content(content_hash(metadata[0]), reread, "imagefolder", data_dir=folder, split="train")
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{flag_name} {folder!r} holds no images ({type(err).__name__})") from None


def load_splits(config: ImageConfig) -> tuple[Dataset | None, Dataset | None]:
    """The raw train and evaluation splits the run needs (None for one it does not), Hub or folders."""
    if config.dataset_name:
        return load_hub_splits(config.dataset_name, train=config.do_train, evaluate=config.do_eval)
    return (load_folder("--train_dir", config.train_dir, reread=config.overwrite_cache) if config.do_train else None,
            load_folder("--validation_dir", config.validation_dir, reread=config.overwrite_cache) if config.do_eval
            else None)


def image_column_of(dataset: Dataset, wanted: str) -> str:
    """`wanted`, or the first column whose feature is an Image."""
    if wanted:
        if wanted not in dataset.column_names:
            raise FlagError("image_column", f"{wanted!r} is not a column ({', '.join(dataset.column_names)})")
        return wanted
    for name, feature in dataset.features.items():
        if type(feature).__name__ == "Image":
            return name
    raise UserError(f"no image column among {', '.join(dataset.column_names)}; set --image_column")


def to_tensor(image, size: int) -> torch.Tensor:
    """A PIL image as a (3, size, size) float tensor in [-1, 1]."""
    array = np.asarray(to_rgb(image).resize((size, size)), dtype=np.float32)
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


def decode(value: dict) -> Any:
    """One image of a column cast to Image(decode=False) (its path or bytes), decoded; an image that cannot be
    decoded now (changed on disk since the check before training) stops the run with one line naming it."""
    from PIL import Image as PILImage

    name = value.get("path") or "an image stored in the dataset"
    try:
        image = PILImage.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        image.load()
        return image
    except Exception as err:  # PIL raises many types for corrupt, truncated or missing files
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"image {name!r} cannot be decoded ({reason}); it changed after the check before training: "
                        f"fix or remove it and run again (with --resume_from_checkpoint auto the data's content "
                        f"check refuses the changed folder: start a new run)") from None


def transform(image_column: str, label_column: str, size: int) -> Callable[[dict], dict]:
    """A batched `Dataset.set_transform` function producing pixel_values and labels from a split whose image column
    is cast to Image(decode=False): each image is decoded here (`decode`)."""
    def apply(batch: dict) -> dict:
        labels = batch[label_column]  # class ids, or multi-label indicator rows (tensors, to be stacked)
        return {"pixel_values": [to_tensor(decode(value), size) for value in batch[image_column]],
                "labels": [torch.tensor(row) for row in labels] if labels and isinstance(labels[0], list) else labels}
    return apply


FOLDER_FLAGS = {"training data": "train_dir", "evaluation data": "validation_dir", "test data": "test_dir"}


def drop_unreadable(dataset: Dataset, column: str, what: str, config: ImageConfig) -> tuple[Dataset, set[int]]:
    """Decode every image first (once per job, kept for the next run); stop with one line naming the first bad one,
    or leave them out with --skip_bad_images. A local folder's content is recorded for the run on the way."""
    flag_name = FOLDER_FLAGS[what]
    folder = getattr(config, flag_name)
    bad = unreadable_images(dataset, column, cache_dir=Path(datasets.config.HF_DATASETS_CACHE) / CHECKS_FOLDER,
                            overwrite=config.overwrite_cache, desc=f"check {what}",
                            source=(flag_name, folder) if folder and not config.dataset_name else None)
    skip = config.skip_bad_images
    if bad and not skip:
        _, name, reason = bad[0]
        raise UserError(f"the {what} has {len(bad)} unreadable image(s), the first {name!r} ({reason}); "
                        f"fix or remove them, or pass --skip_bad_images true to leave them out")
    rows = {row for row, _, _ in bad}
    return (dataset.select([i for i in range(len(dataset)) if i not in rows]) if bad else dataset), rows


def build_data(config: ImageConfig, trained=None) -> RecipeData:
    """The splits the run needs, yielding pixel_values and labels; class names from the training data's
    label column (or the --model_path run); unreadable images stop the run or are left out and counted.

    Runs on every process at once (the Recipe's shared_preparation): the processes share the decode check."""
    with PartialState().main_process_first():  # a Hub download, imagefolder's cache files: the main process first
        train, evaluation = load_splits(config)
        test = load_folder("--test_dir", config.test_dir, classes_required=False, reread=config.overwrite_cache) \
            if config.do_predict else None
    present = [s for s in (train, evaluation, test) if s is not None]
    column = image_column_of(present[0], config.image_column)
    hint = "set --label_column, or put the images in one sub-folder per class"
    if config.multi_label:
        hint = "set --label_column: multi-label images take their label sets from a metadata.csv or " \
               "metadata.jsonl beside them (columns file_name and the labels)"
    labels = {"multi_label": config.multi_label, "delimiter": config.label_delimiter, "hint": hint}
    names, train = training_classes(train, config.label_column, **labels,
                                    trained_names=trained.class_names if trained else None)
    skipped, test_ids = 0, None
    if test is not None:
        paths = test.cast_column(column, Image(decode=False)).with_format("arrow")[column]
        root = Path(config.test_dir).resolve()
        test_ids = [str(Path(path).resolve().relative_to(root)) if path and Path(path).is_absolute() else path or str(i)
                    for i, path in enumerate(paths.combine_chunks().field("path").to_pylist())]
    splits, raw = {}, {}
    for what, split in (("training data", train), ("evaluation data", evaluation), ("test data", test)):
        if split is None:
            continue
        split, bad = drop_unreadable(split, column, what, config)
        skipped += len(bad)
        if what == "test data" and bad:
            test_ids = [row_id for i, row_id in enumerate(test_ids) if i not in bad]
        if what != "training data":  # the training split's were made above
            split = to_model_labels(split, config.label_column, names, what=f"the {what}",
                                    required=what == "evaluation data", **labels)
        if config.label_column != "labels":  # the name every recipe's samples use
            split = split.remove_columns([c for c in ("labels",) if c in split.column_names])
            split = split.rename_column(config.label_column, "labels")
        raw[what] = split.with_format(None)  # a view without the transform below, for the baseline
        split = split.cast_column(column, Image(decode=False))
        split.set_transform(transform(column, "labels", config.image_size))
        splits[what] = split
    ops = config.augment_ops
    baseline = None
    if train is not None and evaluation is not None and wanted(config.baseline, len(train), limit=50_000):
        train_raw, eval_raw = raw["training data"], raw["evaluation data"]

        def baseline() -> dict:
            return score(pixel_logistic_regression(config.multi_label), small_pixels(train_raw, column),
                         np.asarray(train_raw["labels"]), small_pixels(eval_raw, column), np.asarray(eval_raw["labels"]))
    describe_eval = None
    if "evaluation data" in raw:
        files = raw["evaluation data"].cast_column(column, Image(decode=False))

        def describe_eval(indices: list[int]) -> dict[str, list]:  # errors.csv shows the image files
            return {"file": [value.get("path") for value in files.select(indices)[column]]}
    return RecipeData(names, train=splits.get("training data"), eval=splits.get("evaluation data"),
                      test=splits.get("test data"), test_ids=test_ids, describe_eval=describe_eval,
                      augment=partial(augment, ops=ops) if ops else None, baseline=baseline,
                      notes={"skipped_bad_images": skipped} if config.skip_bad_images else {})


def small_pixels(dataset: Dataset, column: str, size: int = 16) -> np.ndarray:
    """Every image as RGB pixels downscaled to size x size, one flat row each (the baseline's features)."""
    return np.stack([np.asarray(to_rgb(image).resize((size, size)), dtype=np.float32).ravel()
                     for image in dataset[column]])


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
        self.head = nn.Sequential(KeyedDropout(config.dropout), nn.Linear(4 * c, num_classes))

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The residual blocks, for --gradient_checkpointing."""
        return [m for m in self.features if isinstance(m, ResidualBlock)]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixel_values))


def build_model(config: ImageConfig, data: RecipeData) -> nn.Module:
    """The small ResNet for the data's classes."""
    return SmallResNet(config, len(data.class_names))


RECIPE = Recipe(ImageConfig, build_data, build_model, model_flags=("channels", "groups", "image_size"),
                name="image_classification", shared_preparation=True)


def main(argv: list[str] | None = None) -> None:
    """Parse flags, then train, evaluate and predict as they say (framework.run)."""
    run(RECIPE, argv)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
