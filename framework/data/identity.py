"""What a run trained on, by content: a hash of each local data file's bytes.

Every local file or saved folder the data loaders read (`load_local_file`, `load_local_stream`, and a
recipe's own loaders through `record_source`) is hashed once per run and recorded under the flag that
named it. The runner writes the record into config.yaml (`data_sources`) and the training files' hashes
into every checkpoint, so a resume on other data (relabelled rows, a replaced file of the same length)
is refused with one line instead of continuing the old run on new data, and `load_local_file` uses the
same hash to check that datasets' cache (keyed by path and modification time) holds this content.

SHA-256 reads about 1-2 GB/s on one core: a million short rows (~100 MB) take well under a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

_CHUNK = 1 << 20
_SOURCES: dict[str, dict[str, str]] = {}  # flag -> {"path": ..., "sha256": ...}, for the run in this process
TRAINING_FLAGS = ("train_file", "train_dir")  # the flags whose data a checkpoint's position refers to


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative names and bytes, in name order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            name = file.relative_to(path).as_posix().encode()
            digest.update(len(name).to_bytes(8, "little") + name + file.stat().st_size.to_bytes(8, "little"))
        with open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def record_source(flag: str, path: str | Path, digest: Optional[str] = None) -> str:
    """Record that this run reads `path` for `flag` (e.g. "--train_file"); returns the content hash."""
    digest = digest or content_hash(path)
    _SOURCES[flag.lstrip("-")] = {"path": str(path), "sha256": digest}
    return digest


def recorded_sources() -> dict[str, dict[str, str]]:
    """The files recorded since `forget_sources` (flag -> path and hash), for config.yaml."""
    return {flag: dict(entry) for flag, entry in _SOURCES.items()}


def forget_sources() -> None:
    """Start a new record (the runner calls it before a recipe builds its data)."""
    _SOURCES.clear()


def training_identity(sources: dict[str, dict[str, str]]) -> dict[str, str]:
    """The part of a run's identity a checkpoint keeps: the training data's hashes, by flag."""
    return {flag: entry["sha256"] for flag, entry in sources.items() if flag in TRAINING_FLAGS}


def identity_problem(saved: Optional[dict[str, str]], current: dict[str, str],
                     sources: dict[str, dict[str, str]]) -> Optional[str]:
    """Why a checkpoint whose training data had the hashes `saved` cannot continue on `current`, or None.
    A checkpoint written before hashes were kept (`saved` None) is not judged."""
    if saved is None:
        return None
    for flag in sorted(set(saved) | set(current)):
        before, now = saved.get(flag), current.get(flag)
        if before != now:
            where = sources.get(flag, {}).get("path", "?")
            if before is None or now is None:
                return f"it was trained {'without' if before is None else 'with'} --{flag}, this run " \
                       f"{'has' if now is not None else 'has none'}"
            return (f"--{flag} {where!r} has other content than when it was made (sha256 {before[:12]}... then, "
                    f"{now[:12]}... now)")
    return None
