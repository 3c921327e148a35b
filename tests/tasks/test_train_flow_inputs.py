import argparse
from pathlib import Path

import pytest

from flows.train import add_cli, resolve_preferences
from tasks.store import ArtifactStore


def test_preferences_resolve_from_a_file_or_an_assemble_key(tmp_path: Path):
    store = ArtifactStore(tmp_path / "store")
    parquet = tmp_path / "set.parquet"
    parquet.write_bytes(b"PAR1-stand-in")
    keyed, path = resolve_preferences(store, str(parquet))
    assert path == parquet.resolve() and keyed.name == "assemble" and len(keyed.key) == 16
    parquet.write_bytes(b"PAR1-other")
    assert resolve_preferences(store, str(parquet))[0].key != keyed.key
    with pytest.raises(FileNotFoundError, match="neither a Parquet file nor an assemble artifact"):
        resolve_preferences(store, "0123456789abcdef")


def test_cli_parses_train_arguments():
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "run.yaml", "--preferences", "abc", "--resume"])
    assert (args.config, args.preferences, args.resume) == (Path("run.yaml"), "abc", True)
    assert args.handler.__name__ == "run_cli"
