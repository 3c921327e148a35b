"""A growing JSONL data root: records appended in batches, as new data lands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.config import SourceConfig


def append_records(root: Path, start: int, count: int) -> SourceConfig:
    """Add records ``start .. start+count-1`` (each its own random image, a box) to ``root/data.jsonl``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(start, start + count):
        pixels = np.random.default_rng(i).integers(0, 256, (48, 48), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        answer = "yes" if i % 2 == 0 else "no"
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"img{i}.png",
                    "question": "Is there a lesion?",
                    "answer": answer,
                    "boxes": [[4, 4, 30, 30]],
                }
            )
        )
    with open(root / "data.jsonl", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=root / "data.jsonl", name="grow")
