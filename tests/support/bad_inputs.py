"""The bad-input corpus (tests/data/bad/), copied into a test's folder with its symlinks made.

``expected_outcomes()`` says what ingestion must do with each line of annotations.jsonl:
``kept`` or the reject reason, by source_ref (``annotations.jsonl:<line>``).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad"
ANNOTATIONS = "annotations.jsonl"
SECRET = b"outside-the-data-root"


def _corpus_module():
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_dicom(path: Path, rows: int, columns: int, pixel_data: bytes | None, **options) -> Path:
    """A DICOM as the corpus writes them (make_corpus.write_dicom: syntax, frames, elements)."""
    _corpus_module().write_dicom(path, rows, columns, pixel_data, **options)
    return path


def expected_outcomes() -> dict[str, str]:
    """source_ref -> "kept" or reason, in the order make_corpus.py writes the lines."""
    cases = _corpus_module().CASES
    outcomes = (
        [expect for _, expect in cases[:3]]
        + ["not_utf8"]
        + [expect for _, expect in cases[3:]]
        + ["bad_json", "bad_record"]
    )
    return {f"{ANNOTATIONS}:{line}": outcome for line, outcome in enumerate(outcomes, start=1)}


def kept_ids() -> set[str]:
    return {record["id"] for record, expect in _corpus_module().CASES if expect == "kept"}


def bad_corpus(folder: Path) -> Path:
    """``folder/root``: the corpus plus symlinks that leave it; ``folder/outside``: their targets.

    The outside files are valid PNGs, so a reader that followed a link would keep the row.
    """
    from PIL import Image

    root, outside = folder / "root", folder / "outside"
    shutil.copytree(CORPUS, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (outside / "dir").mkdir(parents=True)
    for target in (outside / "secret.png", outside / "dir" / "secret.png"):
        Image.new("L", (64, 64), 200).save(target, pnginfo=_text_chunk())
    (root / "link_out.png").symlink_to(outside / "secret.png")
    (root / "linked_dir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "dangling.png").symlink_to(outside / "missing.png")
    return root


def _text_chunk():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("marker", SECRET.decode())
    return info
