"""Small preference sets on disk: real PNG images (clean and lesion-noised), Parquet rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

QA = [
    ("Is there a lesion in the liver?", "Yes, in the right lobe.", "No, the liver is normal and there is no lesion."),
    ("Is the lung healthy?", "No.", "Yes, the lungs are clear."),
    ("Which organ is abnormal?", "The liver.", "The spleen is enlarged."),
    ("What modality is used to take this image?", "CT.", "MRI of the brain."),
]


def write_images(
    folder: Path, index: int, size: int | tuple[int, int] = 40, noised_size: tuple[int, int] | None = None
) -> tuple[str, str]:
    """A synthetic scan (``size``: a side, or (height, width)) and a copy with Gaussian noise inside
    a square 'lesion', at ``noised_size`` when given (a rejected image of another size)."""
    rng = np.random.default_rng(index)
    height, width = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[:height, :width]
    clean = (120 + 60 * np.sin(xx / (3 + index)) + 30 * np.cos(yy / 5)).clip(0, 255).astype(np.uint8)
    base = clean if noised_size is None else np.asarray(Image.fromarray(clean).resize(noised_size[::-1]))
    noised = base.astype(np.float64)
    rows, cols = slice(base.shape[0] // 4, base.shape[0] // 2), slice(base.shape[1] // 4, base.shape[1] // 2)
    noised[rows, cols] += rng.normal(0, 80, noised[rows, cols].shape)
    noised = noised.clip(0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    clean_path, noised_path = folder / f"scan{index}.png", folder / f"scan{index}_noised.png"
    Image.fromarray(clean).save(clean_path)
    Image.fromarray(noised).save(noised_path)
    return str(clean_path), str(noised_path)


def preference_rows(folder: Path, weights: list[float] | None = None) -> list[dict]:
    """One text pair and one visual pair per QA item, alternating; columns of the preference set."""
    rows = []
    for index, (question, answer, hallucination) in enumerate(QA):
        clean, noised = write_images(folder, index)
        for pair_type in ("text", "visual"):
            rows.append(
                {
                    "pair_id": f"p{index}-{pair_type}",
                    "sample_id": f"s{index}",
                    "pair_type": pair_type,
                    "prompt": question,
                    "chosen": answer,
                    "rejected": hallucination if pair_type == "text" else answer,
                    "chosen_image": clean,
                    "rejected_image": clean if pair_type == "text" else noised,
                    "raw_score": 0.5 + 0.1 * index,
                    "weight": 1.0,
                    "error_type": "contradiction" if pair_type == "text" else "lesion_noise",
                    "dataset": "synthetic",
                    "split": "train",
                }
            )
    if weights is not None:
        for row, weight in zip(rows, weights):
            row["weight"] = weight
    return rows


# (height, width): different numbers of image tokens for LLaVA-NeXT, Qwen2-VL / 2.5-VL and Idefics3.
MIXED_SIZES = [(40, 56), (64, 64), (28, 28), (56, 40)]


def mixed_size_rows(folder: Path) -> list[dict]:
    """Text, visual, text, visual pairs on images of four sizes, weights 1.25, 0.5, 0.9, 0.75, then a
    visual pair whose noised image has another size than its clean one."""
    rows = []
    for index, (size, weight) in enumerate(zip(MIXED_SIZES, [1.25, 0.5, 0.9, 0.75])):
        question, answer, hallucination = QA[index]
        clean, noised = write_images(folder, index, size)
        visual = index % 2 == 1
        rows.append(
            {
                "prompt": question,
                "chosen": answer,
                "rejected": answer if visual else hallucination,
                "chosen_image": clean,
                "rejected_image": noised if visual else clean,
                "weight": weight,
                "pair_type": "visual" if visual else "text",
            }
        )
    clean, noised = write_images(folder, len(MIXED_SIZES), (40, 56), noised_size=(56, 84))
    rows.append({**rows[1], "chosen_image": clean, "rejected_image": noised, "weight": 1.0})
    return rows


def write_train_pairs(path: Path, rows: list[dict]) -> Path:
    """A hand-made preference file holding only the columns the train stage reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.catalog import PAIRS, TRAIN_COLUMNS

    schema = pa.schema([PAIRS.schema.field(name) for name in TRAIN_COLUMNS])
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in TRAIN_COLUMNS} for r in rows], schema=schema), path)
    return path
