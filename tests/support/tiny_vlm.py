"""Tiny checkpoints shared by the tests of one session (each built once, on first use, in well under a second)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from models import vlm
from models.families import FAMILIES
from models.tiny import build_tiny, build_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_checkpoint(family)``: the folder of that family's tiny model."""
    root = tmp_path_factory.mktemp("tiny-families")
    built: dict[str, Path] = {}

    def checkpoint(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, root / family, seed=0)
        return built[family]

    return checkpoint


@pytest.fixture(scope="session", params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over every supported family."""
    return request.param


@pytest.fixture(scope="session")
def loaded_family(family: str, tiny_checkpoint: Callable[[str], Path]) -> vlm.VLM:
    """That family's tiny model, loaded once: for tests that only read it (generation, scoring)."""
    return vlm.load(tiny_checkpoint(family), device="cpu")
