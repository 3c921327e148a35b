import argparse
from pathlib import Path

import pytest

from flows.train import add_cli, resolve_preferences
from tasks.config import RunConfig
from tasks.store import Manifest


def test_preferences_resolve_from_a_file_a_set_folder_or_a_published_name(tmp_path: Path):
    config = RunConfig(store=tmp_path / "store", sets=tmp_path / "sets")
    parquet = tmp_path / "set.parquet"
    parquet.write_bytes(b"PAR1-stand-in")
    keyed, path = resolve_preferences(config, str(parquet))
    assert path == parquet.resolve() and keyed.name == "assemble" and len(keyed.key) == 16
    parquet.write_bytes(b"PAR1-other")
    assert resolve_preferences(config, str(parquet))[0].key != keyed.key

    version = tmp_path / "sets" / "demo" / "0123456789abcdef"
    version.mkdir(parents=True)
    manifest = Manifest(
        stage="assemble",
        key=version.name,
        path=str(version),
        inputs={},
        lineage=[],
        config={},
        code_version="c",
        counts={},
        files=[],
        created="2026-01-01T00:00:00+00:00",
        seconds=0.0,
    )
    (version / "manifest.json").write_text(manifest.model_dump_json())
    for ref in ("demo", "demo@0123456789abcdef", str(version)):
        keyed, path = resolve_preferences(config, ref)
        assert (keyed.key, path) == (version.name, version)
    with pytest.raises(FileNotFoundError, match="no preference set 'other'.*demo@0123456789abcdef"):
        resolve_preferences(config, "other")


def test_cli_parses_train_arguments():
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "run.yaml", "--preferences", "abc", "--resume"])
    assert (args.config, args.preferences, args.resume) == (Path("run.yaml"), ["abc"], True)
    assert args.handler.__name__ == "run_cli"
    union = parser.parse_args(["train", "--config", "run.yaml", "--preferences", "r2", "--preferences", "r1"])
    assert union.preferences == ["r2", "r1"] and not union.resume  # a union of sets, the newest first
