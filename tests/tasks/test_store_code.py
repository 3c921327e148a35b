"""Code versions come from the import graph: editing a module a stage imports (directly, through
another module, or inside a function) changes that stage's key, and no other stage's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.store.code import ROOT, code_files, code_version

# Each stage's entry module and the data files it declares (as in the stage module).
STAGES = {
    "ingest": ("tasks.ingest", ()),
    "localize": ("tasks.localize", ()),
    "noise": ("tasks.noise", ()),
    "hallucinate": ("tasks.hallucinate", ()),
    "score": ("tasks.score", ()),
    "assemble": ("tasks.assemble", ()),
    "sft": ("tasks.sft", ()),
    "train": ("tasks.train", ("models/accelerate/ddp.yaml", "models/accelerate/cpu-ddp.yaml")),
    "evaluate": ("tasks.evaluate", ()),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the code, to edit."""
    root = tmp_path_factory.mktemp("code")
    for top in ("flows", "tasks", "models", "experiments"):
        shutil.copytree(ROOT / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def versions(root: Path) -> dict[str, str]:
    return {stage: code_version(module, data=data, root=root) for stage, (module, data) in STAGES.items()}


def changed_by(root: Path, relative: str, before: dict[str, str] | None = None) -> set[str]:
    path = root / relative
    before = before or versions(root)
    original = path.read_bytes()
    path.write_bytes(original + b"\n# edited\n")
    try:
        after = versions(root)
    finally:
        path.write_bytes(original)
    return {stage for stage in STAGES if before[stage] != after[stage]}


def test_the_stage_modules_use_the_derived_versions():
    from tasks import assemble, evaluate, hallucinate, ingest, localize, noise, score, sft, train

    for stage, module in zip(STAGES, (ingest, localize, noise, hallucinate, score, assemble, sft, train, evaluate)):
        assert module.CODE == versions(ROOT)[stage], stage


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        ("tasks/noise/diffusion.py", {"noise"}),
        ("tasks/localize/regions.py", {"localize"}),
        ("models/sam.py", {"localize"}),
        # The experiment's measure stage once left models/loading.py out of its hand-kept list.
        ("models/loading.py", {"localize", "noise", "hallucinate", "score", "sft", "train", "evaluate"}),
        ("models/dpo.py", {"train"}),
        # The training program runs in ranks of its own, yet its code is the train stage's.
        ("models/training.py", {"train"}),
        ("models/launching.py", {"train"}),
        ("models/tiny/llava.py", {"sft", "train"}),
        ("tasks/hallucinate/clinical_lexicon.py", {"hallucinate"}),
        ("models/prompts/judge_first_v1.txt", {"hallucinate", "score"}),
        ("tasks/metrics.py", {"hallucinate", "evaluate"}),
        ("models/accelerate/cpu-ddp.yaml", {"train"}),
        ("flows/curate.py", set()),
    ],
)
def test_an_edit_changes_exactly_the_stages_that_import_it(tree, edited, expected):
    assert changed_by(tree, edited) == expected


@pytest.mark.slow
def test_every_module_a_stage_imports_changes_its_key_and_only_its_importers(tree):
    """Over the whole tree: an edit to any first-party file changes the key of every stage whose
    graph holds it and of no other stage."""
    importers: dict[Path, set[str]] = {}
    for stage, (module, _) in STAGES.items():
        for path in code_files([module], tree):
            importers.setdefault(path, set()).add(stage)
    assert len(importers) > 60
    before = versions(tree)
    for path, stages in sorted(importers.items()):
        assert changed_by(tree, str(path.relative_to(tree)), before) == stages, path


def test_a_module_imported_inside_a_function_counts(tree):
    helper = tree / "tasks/ingest/lazy_helper.py"
    entry = tree / "tasks/ingest/__init__.py"
    original = entry.read_text()
    helper.write_text("VALUE = 1\n")
    later = "\n\ndef later():\n    from tasks.ingest.lazy_helper import VALUE\n\n    return VALUE\n"
    entry.write_text(original + later)
    try:
        assert helper in code_files(["tasks.ingest"], tree)
        assert changed_by(tree, "tasks/ingest/lazy_helper.py") == {"ingest"}
    finally:
        entry.write_text(original)
        helper.unlink()


def test_unknown_modules_and_missing_data_files_are_errors(tree):
    with pytest.raises(ModuleNotFoundError, match="tasks.nosuchstage"):
        code_version("tasks.nosuchstage", root=tree)
    with pytest.raises(FileNotFoundError, match="configs/nothing.yaml"):
        code_version("tasks.train", data=("configs/nothing.yaml",), root=tree)
