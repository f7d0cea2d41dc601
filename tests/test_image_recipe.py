"""recipes/image_classification.py offline on a generated image folder of simple shapes."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from framework.errors import run_main
from helpers import REPO, accelerate_launch, read_json

IMAGES = REPO / "recipes" / "image_classification.py"
SHAPES = ("circle", "square", "triangle")


def _draw(shape: str, rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(0, 90) for _ in range(3))
    color = tuple(rng.randint(150, 255) for _ in range(3))
    image = Image.new("RGB", (32, 32), background)
    size = rng.randint(12, 22)
    x, y = rng.randint(1, 31 - size), rng.randint(1, 31 - size)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([x, y, x + size, y + size], fill=color)
    elif shape == "square":
        draw.rectangle([x, y, x + size, y + size], fill=color)
    else:
        draw.polygon([(x + size / 2, y), (x, y + size), (x + size, y + size)], fill=color)
    return image


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    rng = random.Random(0)
    for split, per_class in (("train", 60), ("valid", 20)):
        for shape in SHAPES:
            folder = root / split / shape
            folder.mkdir(parents=True)
            for i in range(per_class):
                _draw(shape, rng).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("launch_config,world_size", [("cpu.yaml", 1), ("cpu_2proc.yaml", 2)])
def test_image_recipe_learns_generated_shapes(tmp_path, image_folders, launch_config, world_size):
    result = accelerate_launch(launch_config, IMAGES, "--train_dir", str(image_folders / "train"),
                               "--validation_dir", str(image_folders / "valid"), "--output_dir", str(tmp_path),
                               "--num_train_epochs", "12", "--per_device_train_batch_size", "16",
                               "--channels", "16", "--learning_rate", "3e-3")
    assert result.returncode == 0, result.stderr[-3000:]
    report = read_json(tmp_path / "report.json")
    assert report["accuracy"] >= 0.8
    assert set(SHAPES) <= report.keys()  # class names from the folder names
    assert report["macro avg"]["support"] == 60
    assert result.stdout.count("weighted avg") == 1
    assert read_json(tmp_path / "summary.json")["world_size"] == world_size


def test_image_recipe_refuses_an_empty_folder(tmp_path, capsys):
    from recipes import image_classification

    (tmp_path / "empty").mkdir()
    code = run_main(lambda: image_classification.main([
        "--train_dir", str(tmp_path / "empty"), "--validation_dir", str(tmp_path / "empty"),
        "--output_dir", str(tmp_path / "out")]))
    assert code == 2
    assert "--train_dir" in capsys.readouterr().err
