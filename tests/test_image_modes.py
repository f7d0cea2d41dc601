"""Every PIL mode the decode check accepts becomes the RGB a viewer shows (image.files.to_rgb).

Each reference is computed here with numpy from the pixel values the test wrote, not with the
function under test; the images go through a real file (PNG/TIFF) and PIL's decoder.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from image.files import to_rgb

RNG = np.random.default_rng(0)


def _reopen(image: Image.Image, path) -> Image.Image:
    image.save(path)
    reopened = Image.open(path)
    reopened.load()
    return reopened


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def test_sixteen_bit_grayscale_keeps_its_levels(tmp_path):
    levels = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
    image = _reopen(Image.fromarray(levels), tmp_path / "g16.png")
    assert image.mode in ("I;16", "I")  # what PIL makes of a 16-bit PNG
    rgb = np.asarray(to_rgb(image))
    expected = np.round(levels / 257.0)
    assert rgb.shape == (6, 7, 3) and np.abs(rgb[..., 0] - expected).max() <= 0.5
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.asarray(image.convert("RGB")).mean() > 250 > rgb.mean()  # what plain convert("RGB") did: all white


def test_grayscale_with_alpha_is_composited_over_white(tmp_path):
    gray = RNG.integers(0, 256, (5, 5), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (5, 5), dtype=np.uint8)
    image = _reopen(Image.fromarray(np.stack([gray, alpha], -1), "LA"), tmp_path / "la.png")
    rgb = np.asarray(to_rgb(image)).astype(np.float64)
    expected = _over_white(np.repeat(gray[..., None], 3, -1), alpha)
    assert np.abs(rgb - expected).max() <= 1.0


def test_rgba_is_composited_over_white(tmp_path):
    pixels = RNG.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    pixels[0, 0, 3] = 0  # a fully transparent pixel stored as black
    pixels[0, 0, :3] = 0
    image = _reopen(Image.fromarray(pixels, "RGBA"), tmp_path / "rgba.png")
    rgb = np.asarray(to_rgb(image)).astype(np.float64)
    assert np.abs(rgb - _over_white(pixels[..., :3], pixels[..., 3])).max() <= 1.0
    assert (rgb[0, 0] == 255).all()


def test_palette_with_a_transparent_entry(tmp_path):
    palette = [255, 0, 0, 0, 0, 255, 10, 20, 30]  # red, blue, and a colour marked transparent
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    image.info["transparency"] = 2
    image = _reopen(image, tmp_path / "p.png")
    assert image.mode == "P" and "transparency" in image.info
    colours = np.array(palette).reshape(3, 3)
    expected = np.where((indices == 2)[..., None], 255, colours[indices])
    assert (np.asarray(to_rgb(image)) == expected).all()


def test_cmyk(tmp_path):
    cmyk = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    image = _reopen(Image.fromarray(cmyk, "CMYK"), tmp_path / "cmyk.tiff")
    assert image.mode == "CMYK"
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    expected = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], -1) / 255.0
    assert np.abs(np.asarray(to_rgb(image)) - expected).max() <= 1.0


@pytest.mark.parametrize("mode", ["L", "1", "RGB"])
def test_eight_bit_modes_are_as_pil_converts_them(tmp_path, mode):
    pixels = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    image = _reopen(Image.fromarray(pixels, "RGB").convert(mode), tmp_path / f"{mode}.png")
    gray = np.asarray(image.convert("L"))
    rgb = np.asarray(to_rgb(image))
    if mode == "RGB":
        assert (rgb == pixels).all()
    else:
        assert (rgb == np.repeat(gray[..., None], 3, -1)).all()
