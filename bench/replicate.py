"""The demo sample set replicated to N rows, for benchmarks: every row gets its own image file.

Images are the ingested renditions of the demo images (DICOM rendered to PNG), each copy
made unique by one changed pixel, so content-keyed caches cannot collapse the copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tasks.config import IngestConfig, SourceConfig
from tasks.demo_data import build_demo_data
from tasks.imaging import load_array, save_array
from tasks.ingest import ingest_to_file


def replicate_demo(work: Path, rows: int, per_image: int) -> tuple[Path, list[Path]]:
    """Write ``work/replicated/data.jsonl`` with ``rows`` rows, ``per_image`` rows per image file."""
    demo = build_demo_data(work / "samples")
    source = SourceConfig(format="jsonl", root=demo)
    rendered = work / "rendered.parquet"
    ingest_to_file(source, IngestConfig(sources=[source]), rendered)
    records = pq.read_table(rendered).to_pylist()
    root = work / "replicated"
    (root / "images").mkdir(parents=True)
    files, lines = [], []
    for i in range(rows):
        record = records[i % len(records)]
        copy = i // per_image
        target = root / "images" / f"{copy:05d}-{Path(record['image_path']).stem[:12]}.png"
        if not target.exists():
            pixels = load_array(record["image_path"]).copy()
            pixels.flat[0] = copy % 256
            save_array(pixels, target)
            files.append(target)
        lines.append(
            json.dumps(
                {
                    "id": f"r{i}",
                    "image": f"images/{target.name}",
                    "question": record["question"],
                    "answer": record["answer"],
                    "answer_type": record["answer_type"],
                    "task": record["task"],
                    "split": record["split"],
                    "boxes": record["boxes"],
                }
            )
        )
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl", files
