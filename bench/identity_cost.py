"""What recording a run's data by content costs, against reading the same file (framework.data.identity).

    python bench/identity_cost.py /tmp/scale/man1m/train.csv [--repeats 3]

For one CSV file it prints one JSON line: its size and rows, the SHA-256 of its bytes (what every run
records), the check a streamed file gets before training (`check_stream_file`), datasets reading the file
into its cache (`load_dataset`, cold: the cache removed first) and `load_local_file` on a warm cache (the
content hash plus datasets finding its cache), each the median of `--repeats` runs, and the hash's share of
the cold read. A recipe's whole preparation (tokenizing, a tokenizer) comes on top of the cold read, so the
share of preparation is smaller still: bench/scale.py `run` gives that figure for the same file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the framework of this checkout


def _median_time(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(path: Path, repeats: int) -> dict:
    import datasets
    from datasets import load_dataset

    from framework.data.identity import content_hash
    from framework.data.local_files import check_stream_file, load_local_file, quiet_datasets

    cache = Path(tempfile.mkdtemp(prefix="identity-cost-"))
    datasets.config.HF_DATASETS_CACHE = cache
    try:
        hash_s = _median_time(lambda: content_hash(path), repeats)
        check_s = _median_time(lambda: check_stream_file(str(path), "csv", "--train_file"), repeats)

        def cold_read():
            shutil.rmtree(cache, ignore_errors=True)
            with quiet_datasets():
                return load_dataset("csv", data_files=str(path), split="train", cache_dir=str(cache))

        read_s = _median_time(cold_read, repeats)
        rows = len(cold_read())
        shutil.rmtree(cache, ignore_errors=True)
        load_local_file(str(path), "--train_file", ("text", "label"))  # builds the cache and its content record
        warm_s = _median_time(lambda: load_local_file(str(path), "--train_file", ("text", "label")), repeats)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"file": str(path), "mib": round(path.stat().st_size / 2**20, 1), "rows": rows,
            "sha256_s": round(hash_s, 3), "stream_check_s": round(check_s, 3), "cold_read_s": round(read_s, 2),
            "warm_load_local_file_s": round(warm_s, 3), "hash_share_of_cold_read": round(hash_s / read_s, 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.file, args.repeats)))


if __name__ == "__main__":
    main()
