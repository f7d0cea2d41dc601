"""Unreadable images found before training, not at the batch that happens to hold them hours later."""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from datasets import Dataset, Image

Problem = tuple[int, str, str]  # (row, file name or row label, reason)


def _decode_problem(row: int, value: Optional[dict[str, Any]]) -> Optional[Problem]:
    from PIL import Image as PILImage

    if value is None:
        return row, f"row {row}", "no image"
    name = value.get("path") or f"row {row}"
    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with PILImage.open(source) as image:
            image.load()  # open() reads the header only; load() decodes the pixels
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
