"""recipes/image_classification.py offline on a generated image folder of simple shapes."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from PIL import Image

from framework.core.errors import run_main

from helpers import (
    IMAGES,
    SHAPES,
    accelerate_launch,
    in_process_result,
    launch,
    max_abs_diff,
    read_json,
    run_recipe_in_process,
    run_script_in_group,
    weights,
)


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [1, 2])
def test_image_recipe_learns_generated_shapes(tmp_path, image_folders, world_size, capfd):
    args = ["--train_dir", str(image_folders / "train"), "--validation_dir", str(image_folders / "valid"),
            "--output_dir", str(tmp_path), "--num_train_epochs", "8", "--per_device_train_batch_size", "16",
            "--channels", "16", "--learning_rate", "3e-3"]
    # 2 processes through the launcher; 1 in this process (a 1-process launch is test_digits_e2e's)
    result = (accelerate_launch("cpu_2proc.yaml", IMAGES, *args) if world_size == 2
              else in_process_result("image_classification", args, capfd))
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "report.json")
    assert report["accuracy"] >= 0.8
    assert set(SHAPES) <= report.keys()  # class names from the folder names
    assert report["macro avg"]["support"] == 60
    assert result.stdout.count("weighted avg") == 1
    summary = read_json(tmp_path / "summary.json")
    assert summary["world_size"] == world_size
    # the baseline is scikit-learn's logistic regression on 16x16 pixels of the same split, computed once
    assert (summary["baseline_accuracy"], summary["baseline_macro_f1"]) == pytest.approx(
        _sklearn_pixel_baseline(image_folders), abs=1e-12)
    assert result.stdout.count("baseline (scikit-learn, same split): accuracy") == 1


def _sklearn_pixel_baseline(root):
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    def read(split):
        files = sorted((root / split).glob("*/*.png"))
        pixels = [np.asarray(Image.open(f).convert("RGB").resize((16, 16)), dtype=np.float32).ravel() for f in files]
        return np.stack(pixels), [f.parent.name for f in files]

    (train_x, train_y), (valid_x, valid_y) = read("train"), read("valid")
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(train_x), train_y)
    predicted = model.predict(scaler.transform(valid_x))
    return accuracy_score(valid_y, predicted), f1_score(valid_y, predicted, average="macro")


def test_image_recipe_refuses_an_empty_folder(tmp_path, capsys):
    from recipes import image_classification

    (tmp_path / "empty").mkdir()
    code = run_main(lambda: image_classification.main([
        "--train_dir", str(tmp_path / "empty"), "--validation_dir", str(tmp_path / "empty"),
        "--output_dir", str(tmp_path / "out")]))
    assert code == 2
    assert "--train_dir" in capsys.readouterr().err


# fp32: what exactness needs. Augmentation (crop,flip) and the default dropout (0.1) stay on: both are keyed per sample.
EXACT = ["--num_train_epochs", "2", "--channels", "8", "--groups", "4", "--mixed_precision", "no",
         "--seed", "5", "--augment", "crop,flip"]


def _image_args(folders, out, *extra):
    return ["--train_dir", str(folders / "train"), "--validation_dir", str(folders / "valid"),
            "--output_dir", str(out), *EXACT, *extra]


@pytest.mark.slow
def test_augmented_training_is_the_same_on_one_and_two_processes(tmp_path, image_folders):
    assert run_recipe_in_process("image_classification", *_image_args(image_folders, tmp_path / "one",
                                                                      "--per_device_train_batch_size", "32")) == 0
    run_script_in_group(IMAGES, *_image_args(image_folders, tmp_path / "two", "--per_device_train_batch_size",
                                             "16"))  # a forked 2-process gloo group
    assert read_json(tmp_path / "two" / "summary.json")["world_size"] == 2
    assert max_abs_diff(tmp_path / "one", tmp_path / "two") < 5e-5


@pytest.mark.slow
def test_augmented_resume_with_dataloader_workers_is_bitwise(tmp_path, image_folders, capfd):
    args = ["--per_device_train_batch_size", "16", "--dataloader_num_workers", "2"]  # worker processes
    assert run_recipe_in_process("image_classification", *_image_args(image_folders, tmp_path / "full", *args,
                                                                      "--checkpointing_steps", "7")) == 0
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_7", resumed_dir / "checkpoints" / "step_7")
    capfd.readouterr()
    assert run_recipe_in_process("image_classification", *_image_args(image_folders, resumed_dir, *args,
                                                                      "--resume_from_checkpoint", "latest")) == 0
    printed = capfd.readouterr().out
    assert "resumed from" in printed and "at optimizer step 7" in printed
    a, b = weights(tmp_path / "full"), weights(resumed_dir)
    assert all(a[k].equal(b[k]) for k in a)


def test_augmentation_draws_only_from_the_sample_generator():
    from framework.data.loaders import sample_generator
    from recipes.image_classification import augment

    sample = {"pixel_values": torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8), "labels": 1}
    torch.manual_seed(0)
    first = augment(sample, sample_generator(5, 1, 17), ("crop", "flip"))["pixel_values"]
    torch.manual_seed(1)  # the global RNG plays no part
    again = augment(sample, sample_generator(5, 1, 17), ("crop", "flip"))["pixel_values"]
    assert first.equal(again)
    others = {tuple(augment(sample, sample_generator(5, e, i), ("crop", "flip"))["pixel_values"].flatten()[:40]
                    .tolist()) for e in range(3) for i in range(10)}
    assert len(others) > 10  # other epochs and samples get other crops and flips
    assert augment(sample, sample_generator(5, 1, 17), ())["pixel_values"].equal(sample["pixel_values"])


@pytest.fixture
def folders_with_a_corrupt_image(tmp_path, image_folders):
    root = tmp_path / "data"
    shutil.copytree(image_folders, root)
    (root / "train" / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    return root


def test_a_corrupt_image_stops_the_run_before_training(tmp_path, folders_with_a_corrupt_image, capsys):
    out = tmp_path / "out"
    capsys.readouterr()
    assert run_recipe_in_process("image_classification", *_image_args(folders_with_a_corrupt_image, out)) == 2
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the training data has 1 unreadable image(s)")
    assert "broken.png" in lines[0] and "--skip_bad_images" in lines[0]
    assert "train" not in printed.out and not out.exists()  # no banner, no step, nothing written


@pytest.mark.slow
def test_skip_bad_images_trains_and_counts_them(tmp_path, folders_with_a_corrupt_image):
    """...and the decode check of each split shows in a log (stderr not a terminal) as a plain bar with its count
    and rate (that the next run decodes nothing is tested in test_image_files)."""
    import re

    out = tmp_path / "out"
    result = launch([sys.executable, str(IMAGES), *_image_args(folders_with_a_corrupt_image, out),
                     "--skip_bad_images", "true", "--max_steps", "3"], timeout=120,
                    env={"TQDM_MININTERVAL": "0", "HF_DATASETS_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    for what, total in (("training data", 181), ("evaluation data", 60)):
        shown = [line for line in result.stderr.splitlines() if line.startswith(f"check {what}:")]
        assert shown and re.search(rf"\| {total}/{total} \[\d\d:\d\d<\d\d:\d\d, *[\d.]+ ?image/s\]", shown[-1]), shown
    assert "data            : skipped_bad_images 1" in result.stdout
    summary = read_json(out / "summary.json")
    assert summary["skipped_bad_images"] == 1 and summary["optimizer_steps"] == 3


def test_unknown_augmentation_is_refused(tmp_path, capsys):
    from recipes import image_classification

    code = run_main(lambda: image_classification.main(["--train_dir", "a", "--validation_dir", "b",
                                                       "--augment", "crop,rotate"]))
    assert code == 2
    assert capsys.readouterr().err.strip() == ("error: --augment must be none or a comma list of crop, flip, "
                                               "got 'crop,rotate'")


def test_training_labels_for_balanced_class_weights(image_folders):
    import numpy as np

    from framework.core.config import parse_config
    from framework.data.labels import training_labels
    from recipes import image_classification as ic

    config = parse_config(ic.ImageConfig, ["--train_dir", str(image_folders / "train"), "--validation_dir",
                                           str(image_folders / "valid")])
    data = ic.build_data(config)
    labels = training_labels(data.train)
    assert data.class_names == sorted(SHAPES)
    assert np.bincount(labels).tolist() == [60, 60, 60]
    assert [int(data.train[i]["labels"]) for i in (0, 100, 179)] == labels[[0, 100, 179]].tolist()
