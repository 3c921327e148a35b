"""models/ declares what it reads of a stage's settings (models/settings.py); the config classes a
run passes must have every member, so the two cannot drift apart unnoticed."""

from __future__ import annotations

import inspect

import pytest

from models import settings
from tasks.config import EndpointConfig, JudgeConfig, ServeConfig, SFTConfig, TrainConfig
from tasks.store import DigestMemo

PAIRS = [
    (settings.TrainSettings, TrainConfig),
    (settings.LaunchSettings, TrainConfig),
    (settings.SFTSettings, SFTConfig),
    (settings.ServeSettings, ServeConfig),
    (settings.EndpointSettings, EndpointConfig),
    (settings.JudgeSettings, JudgeConfig),
    (settings.FolderDigests, DigestMemo),
]


def members(protocol: type) -> set[str]:
    """Its declared attributes, properties and methods."""
    return set(getattr(protocol, "__annotations__", {})) | {n for n, _ in inspect.getmembers(protocol) if n[0] != "_"}


@pytest.mark.parametrize(("protocol", "config"), PAIRS, ids=[p.__name__ for p, _ in PAIRS])
def test_the_config_class_has_every_member_models_reads(protocol, config):
    assert members(protocol)
    missing = [
        name
        for name in members(protocol)
        if name not in getattr(config, "model_fields", {}) and not hasattr(config, name)
    ]
    assert missing == []
