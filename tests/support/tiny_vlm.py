"""A tiny LLaVA checkpoint folder shared by the tests of one session (built once, seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.tiny import build_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)
