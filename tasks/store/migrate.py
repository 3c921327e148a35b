"""`mmedpo store migrate`: convert a store's item caches from the previous layout (a folder per
item: ``<stage>/.items/<2>/<key>/row.json`` and its files) into the packed one
(tasks/store/packed.py), in place.

Safe to stop and run again: an item's files are linked into the blob folder (the item folder
keeps them), its row is written with the others of its stage in atomic Parquet files, and
only then are the old folders removed; a re-run packs what is left. Artifacts are untouched:
an artifact published under the previous layout holds its files itself and stays readable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tasks.store.packed import old_item_folders, pack_item, write_rows

ITEM_ROW = "row.json"
ROWS_PER_FILE = 4096


def migrate(root: str | Path) -> dict[str, int]:
    """Pack every stage's old item folders under ``root``; items packed per stage. A folder
    without its row (a shard killed under the previous layout) was never an item: removed."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no store there")
    packed: dict[str, int] = {}
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folders = old_item_folders(stage_dir)
        if not folders:
            continue
        rows = []
        for folder in folders:
            row_file = folder / ITEM_ROW
            if row_file.is_file():
                row = json.loads(row_file.read_text())
                rows.append((folder.name, pack_item(root, folder, row, ignore={ITEM_ROW})))
        for start in range(0, len(rows), ROWS_PER_FILE):
            write_rows(root, stage_dir.name, rows[start : start + ROWS_PER_FILE])
        for prefix in {folder.parent for folder in folders}:
            shutil.rmtree(prefix)
        packed[stage_dir.name] = len(rows)
    return packed
