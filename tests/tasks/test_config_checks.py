"""Everything knowable from a run file fails when it is loaded, as one line and exit 2, before
any stage runs: harmful values, places that cannot be written, names that would become paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from flows.cli import main


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def show(path: Path, capsys) -> tuple[int, str]:
    code = main(["config", "show", "--config", str(path)])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.startswith("mmedpo: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(needle in err for needle in needles), err


@pytest.mark.parametrize(
    ("section", "needle"),
    [
        ({"train": {"beta": 0}}, "train.beta: Input should be greater than 0"),
        ({"train": {"beta": -0.1}}, "train.beta: Input should be greater than 0"),
        ({"name": "../X"}, "name: Value error, '../X' is not a plain name"),
        ({"name": "a/b"}, "is not a plain name"),
        ({"name": ".hidden"}, "is not a plain name"),
        ({"hallucinate": {"fewshot_prompt": "../../file"}}, "hallucinate.fewshot_prompt: Value error"),
        ({"hallucinate": {"inject_prompt": "/etc/passwd"}}, "hallucinate.inject_prompt: Value error"),
        ({"score": {"prompt_version": "v1/../../x"}}, "score.prompt_version: Value error"),
        ({"ingest": {"sources": [{"format": "jsonl", "root": "d.jsonl", "name": "../up"}]}}, "ingest.sources.0.name"),
        ({"ingest": {"sources": [{"format": "jsonl", "root": "d.jsonl", "splits": ["../x"]}]}}, "splits.0"),
        (
            {
                "hallucinate": {
                    "backend": ["llm"],
                    "send_images": True,
                    "llm": {"base_url": "https://api.example.com/v1", "capabilities": {"images": True}},
                }
            },
            "send_images: https://api.example.com/v1 is not local and may not receive images",
        ),
    ],
)
def test_a_harmful_or_path_like_value_fails_at_load(tmp_path, capsys, section, needle):
    path = write(tmp_path / "run.yaml", {"store": "s", "sets": "p", **section})
    assert_one_line(*show(path, capsys), str(path), needle)


def test_images_to_a_non_local_endpoint_are_allowed_when_the_config_says_so(tmp_path, capsys):
    llm = {"base_url": "https://api.example.com/v1", "capabilities": {"images": True}, "allow_images": True}
    path = write(tmp_path / "run.yaml", {"hallucinate": {"backend": ["llm"], "send_images": True, "llm": llm}})
    assert main(["config", "show", "--config", str(path)]) == 0


@pytest.mark.parametrize(
    ("places", "needle"),
    [
        ({"store": "s", "sets": "s/sets"}, "must not hold one another"),
        ({"store": "p/store", "sets": "p"}, "must not hold one another"),
        ({"store": "s", "sets": "s"}, "must not hold one another"),
        ({"store": "afile", "sets": "p"}, "store: "),
        ({"store": "afile/under", "sets": "p"}, "is not a folder"),
    ],
)
def test_the_store_and_sets_must_be_separate_writable_folders(tmp_path, capsys, places, needle):
    (tmp_path / "afile").write_text("not a folder")
    path = write(tmp_path / "run.yaml", places)
    assert_one_line(*show(path, capsys), needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_store_fails_at_load(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    path = write(tmp_path / "run.yaml", {"store": "ro/store", "sets": "p"})
    assert_one_line(*show(path, capsys), "is not writable")


def test_a_read_only_store_is_named_when_the_check_finds_it(tmp_path, monkeypatch):
    from tasks.config.checks import writable_folder

    monkeypatch.setattr(os, "access", lambda *_: False)  # as a read-only mount answers
    assert writable_folder("store", tmp_path / "new" / "store") == [f"store: {tmp_path} is not writable"]


def test_a_config_file_nested_too_deep_or_not_utf8_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 20000 + "]" * 20000)
    assert_one_line(*show(deep, capsys), str(deep))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: L\xe9sion\n")
    assert_one_line(*show(latin, capsys), str(latin), "not UTF-8")


def test_noise_too_weak_to_change_a_pixel_is_a_warning_naming_k(tmp_path, capsys):
    import warnings

    path = write(tmp_path / "run.yaml", {"noise": {"k": 0}})
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as a plain `mmedpo` run shows a UserWarning
        assert main(["config", "show", "--config", str(path)]) == 0
        err = capsys.readouterr().err
        assert err.startswith(f"mmedpo: warning: {path}: noise.k=0 changes pixels by about 0.32 grey levels")
        assert err.count("\n") == 1
        assert main(["config", "show", "--config", str(write(tmp_path / "ok.yaml", {"noise": {"k": 500}}))]) == 0
        assert "warning" not in capsys.readouterr().err


def test_an_unexpected_failure_is_one_line_too(tmp_path, capsys, monkeypatch):
    import flows.cli

    def broken(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(flows.cli, "cmd_config_show", broken)
    code = main(["config", "show", "--defaults"])
    assert_one_line(code, capsys.readouterr().err, "RuntimeError: disk on fire second line", "MMEDPO_DEBUG=1")
