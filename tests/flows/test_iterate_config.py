"""What `mmedpo iterate` asks of a run file and what each round changes in it (no flow runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.iterate import round_config
from tasks.config import ConfigError, RunConfig, load_run_config
from tasks.config.iterate import check_iterate
from tasks.evaluate.comparison import rounds_rows, rounds_text
from tasks.store import Manifest


def target_run(tmp_path: Path, **sections) -> RunConfig:
    raw = {"name": "it", "hallucinate": {"backend": "target", "target": {"model_path": "base"}}} | sections
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


def test_a_run_file_iterate_cannot_use_is_refused_naming_the_file_and_fields(tmp_path, capsys):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "train": {"init_adapter": "a"}, "iterate": {"splits": ["val"]}}))
    assert main(["iterate", "--config", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mmedpo: error: {path}: ")
    for field in ("hallucinate.backend: is 'rules'", "train.init_adapter:", "iterate.splits: ['val']"):
        assert field in line

    check_iterate(target_run(tmp_path))  # the target backend on a model: nothing to say
    with pytest.raises(ConfigError, match="train.model: .* is not hallucinate.target.model_path"):
        check_iterate(target_run(tmp_path, train={"model": "other"}))
    with pytest.raises(ConfigError, match="hallucinate.target.adapter: set by each round"):
        check_iterate(
            target_run(tmp_path, hallucinate={"backend": "target", "target": {"model_path": "b", "adapter": "a"}})
        )
    assert main(["iterate", "--config", str(tmp_path / "run.yaml"), "--rounds", "0"]) == 2
    assert "--rounds: must be at least 1" in capsys.readouterr().err


def test_each_round_samples_the_previous_adapter_and_takes_its_own_window(tmp_path):
    config = target_run(tmp_path, iterate={"samples_per_round": 3, "splits": ["train", "val"], "seed": 7})
    policy = Manifest(
        stage="train",
        key="k1",
        path=str(tmp_path / "store/train/k1"),
        inputs={},
        lineage=[],
        config={},
        code_version="c",
        counts={},
        files=[],
        created="",
        seconds=0.0,
    )
    first, second = round_config(config, 1, None), round_config(config, 2, policy)
    assert (first.name, second.name) == ("it-r1", "it-r2")
    assert (
        first.hallucinate.target.adapter is None and second.hallucinate.target.adapter == Path(policy.path) / "adapter"
    )
    assert first.train.model == second.train.model == config.hallucinate.target.model_path
    assert second.hallucinate.splits == ["train", "val"]
    for settings, start in ((first, 0), (second, 3)):
        window = settings.hallucinate.window
        assert window == settings.assemble.window and (window.start, window.count, window.seed) == (start, 3, 7)
    # Everything else is the run file's: the same stage configs, so the same keys as a plain run.
    assert first.localize == config.localize and first.score == config.score and first.evaluate == config.evaluate
    assert round_config(target_run(tmp_path), 2, policy).hallucinate.window is None


def test_one_table_holds_the_base_model_and_every_round():
    base = {"datasets": {"slake": {"closed_accuracy": 0.5, "n_closed": 4}}}
    rounds = [
        {"datasets": {"slake": {"closed_accuracy": 0.75, "n_closed": 4}}},
        {"datasets": {"slake": {"closed_accuracy": 1.0, "n_closed": 4}, "iu": {"bleu": 0.2, "n_report": 2}}},
    ]
    rows = rounds_rows(base, rounds)
    assert rows == [
        {"dataset": "iu", "metric": "bleu", "n": 2, "base": None, "round 1": None, "round 2": 20.0, "change": None},
        {
            "dataset": "slake",
            "metric": "closed_accuracy",
            "n": 4,
            "base": 50.0,
            "round 1": 75.0,
            "round 2": 100.0,
            "change": 50.0,
        },
    ]
    text = rounds_text(rows).splitlines()
    assert text[0].split() == ["dataset", "metric", "n", "base", "round", "1", "round", "2", "change"]
    assert text[3].split() == ["slake", "closed_accuracy", "4", "50.00", "75.00", "100.00", "+50.00"]
