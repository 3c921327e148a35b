"""Store look-ups the evaluate CLI and its UI deployment share (tasks/store/lookup.py)."""

from __future__ import annotations

import pytest

from flows.cli import main
from tasks.config import StageConfig
from tasks.store import ArtifactStore
from tasks.store.lookup import ArtifactMissing, find_artifact, trained_and_samples


def test_keys_newest_and_lineage(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    assert trained_and_samples(store, None, None) == (None, None)
    first = store.run("ingest", "x", StageConfig(), {}, lambda out: (out / "a").write_text("1") and {})
    newer = store.run("ingest", "y", StageConfig(), {}, lambda out: (out / "a").write_text("2") and {})
    assemble = store.run("assemble", "x", StageConfig(), {"ingest": first}, lambda out: {})
    train = store.run("train", "x", StageConfig(), {"assemble": assemble}, lambda out: {})
    assert find_artifact(store, "ingest", None) == newer
    # Without an ingest key: the one the train artifact's preference set came from, not the newest.
    assert trained_and_samples(store, None, None) == (train, first)
    assert trained_and_samples(store, None, None, base_only=True) == (None, newer)
    assert trained_and_samples(store, train.key, newer.key) == (train, newer)
    with pytest.raises(ArtifactMissing, match="no train artifact 'nope'"):
        trained_and_samples(store, "nope", None)


def test_an_unknown_key_is_one_line_on_the_command_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"name: r\nstore: {tmp_path / 'store'}\n")
    assert main(["evaluate", "--config", str(config), "--train", "nope"]) == 2
    assert capsys.readouterr().err.strip() == f"mmedpo: error: no train artifact 'nope' in {tmp_path / 'store'}"
