"""Ingestion throughput on the sample data replicated to 2,000 rows, against bare Pillow decoding.

The replicated set (bench/replicate.py): every `per-image` consecutive rows share one copy of
each sample image they use (DICOMs pre-rendered to PNG so Pillow can decode every one); the
table prints how many distinct files that made. Baseline: Pillow decoding each distinct file
once - the least any checker must do.

    .venv/bin/python bench/ingest.py [--rows 2000] [--per-image 10]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replicate import replicate_demo  # noqa: E402

from tasks.config import IngestConfig, SourceConfig  # noqa: E402
from tasks.ingest import ingest_to_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--per-image", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jsonl, files = replicate_demo(work, args.rows, args.per_image)

        started = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                image.load()
        decode_s = time.perf_counter() - started

        source = SourceConfig(format="jsonl", root=jsonl)
        started = time.perf_counter()
        counts = ingest_to_file(source, IngestConfig(sources=[source]), work / "out.parquet")
        ingest_s = time.perf_counter() - started
        assert counts["samples.kept"] == args.rows, counts

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"{'what':<36}{'seconds':>10}{'rows/s':>12}")
    print(f"{'Pillow decode, each file once':<36}{decode_s:>10.2f}{args.rows / decode_s:>12.0f}")
    print(f"{'mmedpo ingest (jsonl)':<36}{ingest_s:>10.2f}{args.rows / ingest_s:>12.0f}")
    print(f"ratio ingest / decode: {ingest_s / decode_s:.2f}x  ({args.rows} rows, {len(files)} image files)")


if __name__ == "__main__":
    main()
