"""Every prompt template, in this one folder: ``<purpose>_<part>_<version>.txt``, filled with
``string.Template`` ($name). Their text is part of the code version of every stage that
sends them (tasks.store.code hashes the .txt files beside every package a stage imports)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template

SYSTEM_SEPARATOR = "\n---\n"


def template(name: str) -> Template:
    """The template file ``<name>.txt``; a clear error naming the ones there are."""
    folder = resources.files(__name__)
    path = folder / f"{name}.txt"
    # A name is a file in this folder, never a path: '../x' would read (and send) any file.
    if not name or Path(name).name != name or name.startswith(".") or not path.is_file():
        have = sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))
        raise FileNotFoundError(f"prompt template models/prompts/{name}.txt not found (have: {', '.join(have)})")
    return Template(path.read_text())


def examples(name: str, fields: int) -> list[tuple[str, ...]]:
    """The examples file ``<name>.txt``: one example a line, ``fields`` parts separated by ``|``;
    blank lines and ``#`` comments skipped."""
    found = []
    for number, line in enumerate(template(name).template.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = tuple(part.strip() for part in line.split("|"))
        if len(parts) != fields or not all(parts):
            raise ValueError(
                f"models/prompts/{name}.txt line {number}: {fields} non-empty parts separated by | expected"
            )
        found.append(parts)
    return found


def chat(name: str) -> tuple[str, Template]:
    """A two-part template: the system message, a line ``---``, the user message."""
    system, _, user = template(name).template.partition(SYSTEM_SEPARATOR)
    return system.strip(), Template(user.strip())
