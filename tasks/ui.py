"""What each stage shows in the Prefect UI: tables, markdown, images, progress.

Only the thin @task wrappers call these (they need a Prefect run context); the plain stage
functions stay free of Prefect so tests can call them directly.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from tasks.store import Manifest

MAX_TABLE_ROWS = 200


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def table(key: str, rows: Sequence[Mapping[str, Any]], description: str) -> None:
    create_table_artifact(
        key=artifact_key(key), table=[dict(r) for r in rows[:MAX_TABLE_ROWS]], description=description
    )


def markdown(key: str, text: str, description: str) -> None:
    create_markdown_artifact(key=artifact_key(key), markdown=text, description=description)


def alert(stage: str, lines: Sequence[str], note: bool = False) -> None:
    """Things a run must not pass over in silence: logged as warnings (the terminal) and shown as
    the stage's alerts artifact (the UI). ``note``: what a run does by design but a reader could
    take for a fault, logged as information and shown as the stage's notes. Nothing when there are none."""
    if not lines:
        return
    from prefect.logging import get_run_logger

    log, kind, bold = (get_run_logger().info, "notes", "") if note else (get_run_logger().warning, "alerts", "**")
    for line in lines:
        log(line)
    markdown(f"{stage}-{kind}", "\n".join(f"- {bold}{line}{bold}" for line in lines), f"{stage}: {kind}")


def manifest_markdown(manifest: Manifest) -> None:
    counts = "\n".join(f"| {name} | {value:g} |" for name, value in sorted(manifest.counts.items()))
    inputs = "\n".join(f"- `{name}`: `{key}`" for name, key in sorted(manifest.inputs.items())) or "- (none)"
    text = (
        f"### {manifest.stage} `{manifest.key}`\n\n"
        f"Stored at `{manifest.path}` ({len(manifest.files)} files, computed in {manifest.seconds:.1f} s, "
        f"code `{manifest.code_version}`, created {manifest.created}).\n\n"
        f"**Inputs**\n{inputs}\n\n| counter | value |\n|---|---|\n{counts}\n"
    )
    markdown(f"{manifest.stage}-manifest", text, f"{manifest.stage} manifest")


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image(key: str, png: bytes, description: str) -> None:
    create_image_artifact(image_url=png_data_url(png), key=artifact_key(key), description=description)


def figure_png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


class Progress:
    """A progress artifact a stage updates while it works through its items."""

    def __init__(self, stage: str, total: int):
        self.total = max(total, 1)
        self.done = 0
        self.id = create_progress_artifact(
            progress=0.0, key=artifact_key(stage, "progress"), description=f"{stage} progress"
        )

    def advance(self, items: int = 1) -> None:
        self.done += items
        update_progress_artifact(self.id, progress=min(100.0, 100.0 * self.done / self.total))


def display_rgb(pixels: Any) -> Any:
    """An image, mask or 16-bit array as 8-bit RGB for a thumbnail (16-bit: own range)."""
    import numpy as np

    values = np.asarray(pixels)
    if values.dtype == bool:
        values = values.astype(np.uint8) * 255
    elif values.dtype != np.uint8:
        values = values.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        values = np.round((values - low) / (high - low) * 255 if high > low else np.zeros_like(values)).astype(np.uint8)
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    return values


def image_grid_png(
    rows: Sequence[Sequence[Any]], titles: Sequence[str], labels: Sequence[str] = (), cell: int = 160
) -> bytes:
    """A PNG grid: one row per sample, one column per title, each array fitted into a cell.

    ``None`` leaves a cell blank (e.g. a sample whose noised image failed).
    """
    from PIL import Image, ImageDraw

    header, footer, pad = 16, 14 if labels else 0, 4
    width = len(titles) * (cell + pad) + pad
    height = header + len(rows) * (cell + footer + pad) + pad
    canvas = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((pad + col * (cell + pad) + 2, 2), title, fill=(230, 230, 230))
    for r, panels in enumerate(rows):
        top = header + r * (cell + footer + pad)
        for col, pixels in enumerate(panels):
            if pixels is None:
                continue
            thumb = Image.fromarray(display_rgb(pixels))
            # Small images are scaled up too (nearest: a 64 px lesion stays crisp), so every panel fills its cell.
            scale = cell / max(thumb.size)
            size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
            thumb = thumb.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
            left = pad + col * (cell + pad)
            canvas.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
        if labels:
            draw.text((pad, top + cell + 1), labels[r][: width // 6], fill=(200, 200, 200))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
