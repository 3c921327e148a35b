"""Ingestion throughput on the sample data replicated to 2,000 rows, against bare Pillow decoding.

The replicated set has 10 questions per distinct image file (SLAKE's ratio), 200 image files
in all (copies of the sample images, DICOMs pre-rendered to PNG so Pillow can decode every
one). Baseline: Pillow decoding each distinct file once - the least any checker must do.

    .venv/bin/python bench/ingest.py [--rows 2000] [--per-image 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from tasks.config import IngestConfig, SourceConfig
from tasks.demo_data import build_demo_data
from tasks.ingest import ingest_to_file


def replicate(work: Path, rows: int, per_image: int) -> tuple[Path, list[Path]]:
    samples = work / "samples"
    demo = build_demo_data(samples)
    # Render once through ingestion so the copies are plain PNG/JPEG.
    rendered = work / "rendered.parquet"
    ingest_to_file(SourceConfig(format="jsonl", root=demo), IngestConfig(sources=[SourceConfig(format="jsonl", root=demo)]), rendered)
    import pyarrow.parquet as pq

    records = pq.read_table(rendered).to_pylist()
    unique = sorted({r["image_path"] for r in records})
    root = work / "replicated"
    (root / "images").mkdir(parents=True)
    files, lines = [], []
    for i in range(rows):
        image_index = i // per_image
        source = Path(unique[image_index % len(unique)])
        target = root / "images" / f"{image_index:05d}{source.suffix}"
        if not target.exists():
            shutil.copyfile(source, target)
            files.append(target)
        record = records[i % len(records)]
        lines.append(json.dumps({"id": f"r{i}", "image": f"images/{target.name}", "question": record["question"],
                                 "answer": record["answer"], "task": record["task"], "boxes": record["boxes"]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl", files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--per-image", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jsonl, files = replicate(work, args.rows, args.per_image)

        started = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                image.load()
        decode_s = time.perf_counter() - started

        source = SourceConfig(format="jsonl", root=jsonl)
        started = time.perf_counter()
        counts = ingest_to_file(source, IngestConfig(sources=[source]), work / "out.parquet")
        ingest_s = time.perf_counter() - started
        assert counts["kept"] == args.rows, counts

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"{'what':<36}{'seconds':>10}{'rows/s':>12}")
    print(f"{'Pillow decode, each file once':<36}{decode_s:>10.2f}{args.rows / decode_s:>12.0f}")
    print(f"{'mmedpo ingest (jsonl)':<36}{ingest_s:>10.2f}{args.rows / ingest_s:>12.0f}")
    print(f"ratio ingest / decode: {ingest_s / decode_s:.2f}x  ({args.rows} rows, {len(files)} image files)")


if __name__ == "__main__":
    main()
