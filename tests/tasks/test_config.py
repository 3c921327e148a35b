"""The run config: sections by stage, refused typos, one error line per bad file, the demo's
file holding only what differs from the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.cli import demo_run_text, main
from tasks.config import ConfigError, RunConfig, changed_fields, load_run_config


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_unknown_section_is_refused_by_name(tmp_path):
    path = write(tmp_path / "run.yaml", {"name": "x", "sfft": {"epochs": 1}})
    with pytest.raises(ConfigError) as caught:
        load_run_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "sfft: Extra inputs are not permitted" in message


def test_a_bad_field_is_named_with_its_section(tmp_path):
    path = write(tmp_path / "run.yaml", {"noise": {"k": "many"}, "train": {"lora_r": 8, "lora_rr": 2}})
    with pytest.raises(ConfigError) as caught:
        load_run_config(path)
    assert "noise.k: " in str(caught.value) and "train.lora_rr: Extra inputs are not permitted" in str(caught.value)


def test_sft_is_absent_unless_the_run_file_has_the_section(tmp_path):
    assert load_run_config(write(tmp_path / "a.yaml", {"name": "a"})).sft is None
    config = load_run_config(write(tmp_path / "b.yaml", {"sft": {"epochs": 2, "model": "base"}}))
    assert config.sft is not None and config.sft.epochs == 2
    assert config.sft.model == (tmp_path / "base").resolve()  # relative to the file


@pytest.mark.parametrize(
    "command", [["experiment"], ["curate"], ["train", "--preferences", "x"], ["sft"], ["evaluate"], ["iterate"]]
)
def test_every_command_reports_a_bad_file_in_one_line(tmp_path, capsys, command):
    path = write(tmp_path / "bad.yaml", {"name": "x", "unknown_section": 1})
    code = main([*command, "--config", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and str(path) in err[0] and "unknown_section" in err[0]


def test_config_show_prints_the_full_resolved_config(tmp_path, capsys):
    path = write(tmp_path / "run.yaml", {"name": "shown", "store": "store", "noise": {"k": 300}})
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "shown" and shown["noise"]["k"] == 300
    assert shown["store"] == str((tmp_path / "store").resolve())
    assert shown["noise"]["timesteps"] == RunConfig().noise.timesteps  # defaults filled in
    assert main(["config", "show", "--defaults"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == RunConfig().model_dump(mode="json")


def test_the_demo_file_holds_only_what_differs_from_the_defaults():
    written = yaml.safe_load(demo_run_text())
    assert changed_fields(RunConfig.model_validate(written)) == written  # nothing in it is a default
    assert set(written) == {"name", "store", "sets", "ingest", "hallucinate", "score", "train", "evaluate"}
    assert "localize" not in written and "beta" not in written["train"] and written["train"]["lora_r"] == 8
    # The real model: served for hallucination (the rules where it gives nothing usable), two judges.
    assert written["hallucinate"]["backend"] == ["llm", "rules"]
    assert written["hallucinate"]["llm"]["serve"] == {"model": "../models/smollm2-135m-instruct"}
    assert [j["kind"] for j in written["score"]["judges"]] == ["transformers", "endpoint"]
    fast = yaml.safe_load(demo_run_text(fast=True))
    assert set(fast) == {"name", "store", "sets", "ingest", "train", "evaluate"}  # rules only, as before
    assert {k: v for k, v in written.items() if k in fast} == fast
    assert demo_run_text(fast=True).startswith("# The demo's run config")
