"""Each registry is one set of names bound to one implementation per name; an unknown name is a
config error at load, naming the field."""

from __future__ import annotations

from typing import Literal, get_args

import pytest
import yaml

from models.families import FAMILIES
from models.panel import JUDGE_KINDS
from models.registry import bind
from models.settings import JudgeKind
from models.tiny import BUILDERS
from tasks.config import ConfigError, SourceFormat, load_run_config
from tasks.config.hallucinate import Backend
from tasks.hallucinate import BACKENDS
from tasks.ingest import READERS


def test_bind_returns_the_table_when_names_and_implementations_agree():
    table = bind("colours", get_args(Literal["red", "blue"]), {"red": 1, "blue": 2})
    assert table == {"red": 1, "blue": 2}


def test_bind_refuses_a_name_without_an_implementation_and_an_implementation_without_a_name():
    with pytest.raises(TypeError, match=r"colours: names without an implementation \['green'\]"):
        bind("colours", ("red", "green"), {"red": 1})
    with pytest.raises(TypeError, match=r"implementations without a name \['blue'\]"):
        bind("colours", ("red",), {"red": 1, "blue": 2})


@pytest.mark.parametrize(
    ("names", "table"),
    [
        (get_args(SourceFormat), READERS),
        (tuple(FAMILIES), BUILDERS),
        (get_args(JudgeKind), JUDGE_KINDS),
        (get_args(Backend), BACKENDS),
    ],
    ids=["source formats", "tiny families", "judge kinds", "hallucinate backends"],
)
def test_every_registry_table_is_keyed_by_exactly_its_declared_names(names, table):
    assert set(table) == set(names)
    assert len(names) >= 3


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"ingest": {"sources": [{"format": "dicom-zip", "root": "."}]}}, "ingest.sources.0.format"),
        ({"score": {"judges": [{"name": "j", "kind": "oracle"}]}}, "score.judges.0.kind"),
        ({"hallucinate": {"backend": "oracle"}}, "hallucinate.backend"),
        ({"hallucinate": {"backend": ["rules", "oracle"]}}, "hallucinate.backend"),
    ],
)
def test_an_unknown_name_in_a_run_config_fails_at_load_naming_the_field(tmp_path, section, field):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError) as error:
        load_run_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert field in message


def test_the_panel_refuses_an_unknown_judge_kind_instead_of_building_another_judge():
    import asyncio
    from types import SimpleNamespace

    from models.panel import open_panel

    async def open_it():
        async with open_panel([SimpleNamespace(name="j", kind="oracle", resolved_protocol=None)], "v1", None):
            pass

    with pytest.raises(ValueError, match=r"judge 'j': unknown kind 'oracle' \(known: rules, endpoint, transformers\)"):
        asyncio.run(open_it())
