"""Imports point one way: flows -> tasks -> models. No module under models/ imports tasks/ or
flows/ (function-level and type-checking imports included), none under tasks/ imports flows/,
and nothing in the product imports experiments/; no stage imports another stage (what two share
lives in a shared module, which imports no stage); no module in flows/, tasks/, models/ is over
400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.store.code import module_file

ROOT = Path(__file__).resolve().parents[1]
# A layer and the packages it must not import.
FORBIDDEN = {
    "models": ("tasks", "flows", "experiments"),
    "tasks": ("flows", "experiments"),
    "flows": ("experiments",),
}


def imported(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from tasks import evaluate` imports the module tasks.evaluate.
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_down(layer):
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules(layer)
        for line, name in imported(path)
        if name.split(".")[0] in FORBIDDEN[layer]
    ]
    assert upward == []


STAGES = ("ingest", "localize", "noise", "hallucinate", "score", "assemble", "sft", "train", "evaluate")


def test_no_stage_imports_another():
    crossing = []
    for path in modules("tasks"):
        own = path.relative_to(ROOT / "tasks").parts[0].removesuffix(".py")
        for line, name in imported(path):
            parts = name.split(".")
            if parts[0] == "tasks" and len(parts) > 1 and parts[1] in STAGES and parts[1] != own:
                crossing.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert crossing == []


def defined_names(package_init: Path) -> set[str]:
    """The names a package's ``__init__.py`` binds at its top level."""
    names: set[str] = set()
    for node in ast.parse(package_init.read_bytes()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_every_first_party_import_resolves_in_this_checkout():
    """A module moved without its importers updated must fail here: an editable install of
    another checkout would otherwise serve the old module from there, and the tests pass."""
    unresolved = []
    for path in [
        p for top in (*FORBIDDEN, "experiments", "tests", "bench") for p in sorted((ROOT / top).rglob("*.py"))
    ]:
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                wanted = [node.module]
                package = module_file(node.module)
                if package is not None and package.name == "__init__.py":
                    bound = defined_names(package)
                    wanted += [f"{node.module}.{a.name}" for a in node.names if a.name not in bound]
            else:
                continue
            for name in wanted:
                if name.split(".")[0] in (*FORBIDDEN, "experiments") and module_file(name) is None:
                    unresolved.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert unresolved == []


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tasks.config import TrainConfig\n    import flows.cli\n")
    assert [name for _, name in imported(module)] == ["tasks.config", "tasks.config.TrainConfig", "flows.cli"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_module_is_over_400_lines(layer):
    long = [f"{p.relative_to(ROOT)}: {n}" for p in modules(layer) if (n := len(p.read_text().splitlines())) > 400]
    assert long == []
