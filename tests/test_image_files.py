"""Image folders at scale: the recipe's own listing (what datasets' imagefolder gives, at scandir's cost) and the
decode check, shared by a job's processes and kept for the next run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from datasets import Image, load_dataset
from PIL import Image as PILImage

from helpers import debug_launch
from image.files import list_image_folder, unreadable_images


def _png(path: Path, shade: int = 0, size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (size, size), (shade, 0, 0)).save(path)


def _paths_and_labels(dataset):
    paths = [v["path"] for v in dataset.cast_column("image", Image(decode=False))["image"]]
    if "label" not in dataset.column_names:
        return paths, None, None
    return paths, list(dataset["label"]), dataset.features["label"].names


@pytest.mark.parametrize("layout", ["classes", "loose test images", "one class folder"])
def test_the_listing_is_what_imagefolder_gives(tmp_path, layout):
    """Paths, their order, labels and class names equal imagefolder's: class names that sort differently as
    folders and as paths ('a' and 'a b'), numbered files, a hidden file, a '__' file (kept) and a '__' folder
    (ignored), a file that is not an image."""
    root = tmp_path / "images"
    classes = {"classes": ["a", "a b", "b"], "loose test images": [], "one class folder": ["only"]}[layout]
    for name in classes:
        for stem in ("1", "10", "2", "__u", ".hidden"):
            _png(root / name / f"{stem}.png")
        (root / name / "notes.txt").write_text("not an image")
    if not classes:
        for stem in ("3", "20", "__v"):
            _png(root / f"{stem}.png")
    _png(root / "__pycache__" / "x.png")
    ours = list_image_folder(str(root), "--test_dir", classes_required=False)
    theirs = load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=str(tmp_path / "cache"))
    assert _paths_and_labels(ours) == _paths_and_labels(theirs)
    assert len(ours) == max(1, len(classes)) * 4 - (1 if not classes else 0)


def _record_decodes(monkeypatch, folder: Path):
    """Every decode the check makes is appended to folder/decoded-<rank> (one file per process of the job, its
    decode workers included); chunks of 4 images, so even this small folder is decoded by worker processes."""
    import os

    from accelerate import PartialState

    from image import files

    original = files._decode_problem

    def recording(row, value):
        with open(folder / f"decoded-{PartialState().process_index}", "a") as handle:
            handle.write(f"{row} {os.getpid()}\n")
        return original(row, value)

    monkeypatch.setattr(files, "_decode_problem", recording)
    monkeypatch.setattr(files, "DECODE_CHUNK", 4)


def _check(root: str, cache: str, out: str, overwrite: bool, workers: int | None = None) -> None:
    from accelerate import PartialState

    PartialState(cpu=True)  # as the recipe runner's Accelerator sets it up: a gloo group on a CPU machine
    problems = unreadable_images(list_image_folder(root, "--train_dir", classes_required=True), "image",
                                 cache_dir=Path(cache), overwrite=overwrite, workers=workers)
    Path(out, f"problems-{PartialState().process_index}.json").write_text(json.dumps(problems))


def _decoded(folder: Path) -> tuple[list[list[int]], int]:
    """The rows each process of the last job decoded, and how many OS processes did the decoding."""
    lines = {f.name: [line.split() for line in f.read_text().splitlines()] for f in sorted(folder.glob("decoded-*"))}
    for f in folder.glob("decoded-*"):
        f.unlink()
    pids = {pid for rows in lines.values() for _, pid in rows}
    return [sorted(int(row) for row, _ in rows) for rows in lines.values()], len(pids)


def test_two_processes_share_the_decode_check_and_the_next_run_decodes_only_what_changed(tmp_path, monkeypatch):
    root = tmp_path / "train"
    for i in range(30):
        _png(root / ("a" if i % 2 else "b") / f"{i:02d}.png", shade=i)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    rows = len(list(root.glob("*/*.png")))
    broken = [str(p) for p in sorted(root.glob("*/*.png"))].index(str(root / "b" / "broken.png"))
    _record_decodes(monkeypatch, tmp_path)
    cache, args = tmp_path / "cache", (str(root), str(tmp_path / "cache"), str(tmp_path))

    debug_launch(_check, *args, False)  # 2 processes: each image decoded by exactly one of them
    (first, second), _ = _decoded(tmp_path)
    assert not set(first) & set(second) and sorted(first + second) == list(range(rows))
    problems = [json.loads((tmp_path / f"problems-{rank}.json").read_text()) for rank in (0, 1)]
    assert problems[0] == problems[1] and [(p[0], Path(p[1]).name) for p in problems[0]] == [(broken, "broken.png")]
    assert len(list(cache.glob("*.json"))) == 1

    debug_launch(_check, *args, False)  # the same files again: nothing decoded, the same result
    assert _decoded(tmp_path) == ([], 0)
    assert json.loads((tmp_path / "problems-1.json").read_text()) == problems[0]

    _png(root / "a" / "03.png", shade=200, size=6)  # one file changes: only it is decoded
    (root / "b" / "broken.png").unlink()
    _png(root / "b" / "broken.png")  # the broken one is mended
    debug_launch(_check, *args, False)
    assert sorted(sum(_decoded(tmp_path)[0], [])) == sorted([1, broken])
    assert json.loads((tmp_path / "problems-0.json").read_text()) == []

    _check(*args, True, 2)  # one process, --overwrite_cache: everything decoded again, by two decode workers
    (decoded,), workers = _decoded(tmp_path)
    assert sorted(decoded) == list(range(rows)) and workers == 2


def test_a_corrupt_image_with_the_size_and_time_of_a_checked_one_is_decoded_again_and_the_record_follows(tmp_path):
    from framework.data.identity import forget_sources, recorded_sources

    root = tmp_path / "train"
    for i in range(6):
        _png(root / ("a" if i % 2 else "b") / f"{i}.png", shade=i)
    listed = list_image_folder(str(root), "--train_dir", classes_required=True)
    cache = tmp_path / "cache"
    forget_sources()
    assert unreadable_images(listed, "image", cache_dir=cache, source=("train_dir", str(root))) == []
    before = recorded_sources()["train_dir"]["sha256"]
    victim = root / "a" / "1.png"
    stat = victim.stat()
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * (stat.st_size - 8))  # same size, damaged
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same time
    problems = unreadable_images(listed, "image", cache_dir=cache, source=("train_dir", str(root)))
    assert [Path(name).name for _, name, _ in problems] == ["1.png"]
    assert recorded_sources()["train_dir"]["sha256"] != before


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_an_image_that_breaks_after_the_check_stops_the_run_with_one_line_naming_it(tmp_path, capsys, workers):
    from datasets import Dataset, Image
    from image_classification import transform
    from torch.utils.data import DataLoader

    from framework.core.errors import run_main

    broken = tmp_path / "late.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"changed after the check" * 4)
    split = Dataset.from_dict({"image": [str(broken)], "labels": [0]}).cast_column("image", Image(decode=False))
    split.set_transform(transform("image", "labels", 16))
    loader = DataLoader(split, batch_size=1, num_workers=workers, collate_fn=lambda rows: rows)
    assert run_main(lambda: next(iter(loader))) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: image {str(broken)!r} cannot be decoded ("), lines


def test_a_relabelled_metadata_file_with_its_time_restored_is_read_again(tmp_path):
    from image_classification import load_folder

    root = tmp_path / "train"
    for i in range(4):
        _png(root / f"{i}.png", shade=i * 40)
    metadata = root / "metadata.csv"
    metadata.write_text("file_name,label\n" + "".join(f"{i}.png,{'food' if i % 2 else 'tech'}\n" for i in range(4)))
    assert sorted(set(load_folder("--train_dir", str(root))["label"])) == ["food", "tech"]
    stat = metadata.stat()
    metadata.write_text(metadata.read_text().replace("food", "meal"))
    os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or an unpacked archive leave it
    assert sorted(set(load_folder("--train_dir", str(root))["label"])) == ["meal", "tech"]
