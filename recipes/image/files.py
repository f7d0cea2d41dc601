"""Image files: the folder layout, every image decoded before training, and faithful conversion to RGB.

Unreadable images are found before training, not at the batch that happens to hold
them hours later; an image folder whose layout would give wrong classes is refused
with a line that shows the layout expected.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import numpy as np
from datasets import Dataset, Image

from framework.core.errors import FlagError

Problem = tuple[int, str, str]  # (row, file name or row label, reason)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def to_rgb(image: Any) -> Any:
    """A PIL image as 8-bit RGB, as a viewer shows it.

    PIL's own `convert("RGB")` is right for 8-bit modes (L, P, 1, CMYK, YCbCr) but
    clips 16-bit grayscale (a PNG of mode I;16 or I, values 0..65535) at 255, which
    turns nearly every pixel white: those are scaled to 0..255 instead. Transparent
    pixels (RGBA, LA, PA, or a palette or grayscale image with a transparency entry)
    are composited over white; dropping the alpha would show whatever colour happens
    to be stored under it (often black). The decode check converts every image too, so
    a conversion that fails is reported before training as an unreadable image.
    """
    from PIL import Image as PILImage

    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(levels / 257.0), 0, 255).astype(np.uint8)
        return PILImage.fromarray(gray).convert("RGB")
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _decode_problem(row: int, value: Optional[dict[str, Any]]) -> Optional[Problem]:
    from PIL import Image as PILImage

    if value is None:
        return row, f"row {row}", "no image"
    name = value.get("path") or f"row {row}"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with PILImage.open(source) as image:
            image.load()  # open() reads the header only; load() decodes the pixels
            to_rgb(image)
    except Exception as err:  # PIL raises many types for corrupt, truncated or non-image files
        return row, name, (str(err).splitlines() or [type(err).__name__])[0]
    return None


def unreadable_images(dataset: Dataset, column: str, threads: Optional[int] = None) -> list[Problem]:
    """Decode every image of `column` (in parallel threads: PIL releases the GIL while decoding);
    return the (row, name, reason) of each one that fails, in row order."""
    raw = dataset.cast_column(column, Image(decode=False))
    with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 1)) as pool:
        results = pool.map(_decode_problem, range(len(raw)), raw[column], chunksize=64)
        return [problem for problem in results if problem is not None]


def _image_extensions() -> set[str]:
    from PIL import Image as PILImage

    return {ext.lower() for ext in PILImage.registered_extensions()}


def check_folder_layout(folder: str, flag: str, *, classes_required: bool) -> None:
    """Refuse an image folder whose layout is not `folder/<class>/<image>` (one level of class folders).

    Images lying in `folder` itself give no class (allowed where `classes_required` is False: test
    images), and images one level deeper than the class folders would be labelled by their innermost
    folder. A folder with a metadata file (metadata.csv/jsonl/parquet) names its labels there and is
    not checked.
    """
    root = Path(folder)
    if root.is_file():
        raise FlagError(flag.lstrip("-"), f"{folder!r} is a file; give a folder with one sub-folder of images per class "
                        f"({flag} DIR with DIR/<class>/<image>)")
    if not root.is_dir():
        raise FlagError(flag.lstrip("-"), f"{folder!r} does not exist")
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    if any(e.name in METADATA_FILES for e in entries):
        return
    images = _image_extensions()
    loose = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in images)
    classes = [e for e in entries if e.is_dir()]
    if loose and classes_required:
        raise FlagError(flag.lstrip("-"), f"{folder!r} holds images directly in it ({loose[0]!r}); put them in one "
                        f"sub-folder per class: {folder}/<class>/<image>")
    if classes_required and len(classes) == 1:  # imagefolder would give no label column at all
        raise FlagError(flag.lstrip("-"), f"{folder!r} has only the class folder {classes[0].name!r}; a classifier needs at "
                        f"least two classes in its training data")
    for entry in sorted(classes, key=lambda e: e.name):
        inner = sorted(e.name for e in os.scandir(entry.path) if e.is_dir() and not e.name.startswith("."))
        if inner:
            raise FlagError(flag.lstrip("-"), f"{folder!r} has a folder inside its class folder {entry.name!r} "
                            f"({entry.name}/{inner[0]}); expected one level of class folders: "
                            f"{folder}/<class>/<image>")
