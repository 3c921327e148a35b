"""Every prompt template, in this one folder: ``<purpose>_<part>_<version>.txt``, filled with
``string.Template`` ($name). Their text is part of the code version of every stage that
sends them (tasks.store.code_version hashes a package's .txt files with its .py files)."""

from __future__ import annotations

from importlib import resources
from string import Template

SYSTEM_SEPARATOR = "\n---\n"


def template(name: str) -> Template:
    """The template file ``<name>.txt``; a clear error naming the ones there are."""
    folder = resources.files(__name__)
    path = folder / f"{name}.txt"
    if not path.is_file():
        have = sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))
        raise FileNotFoundError(f"prompt template models/prompts/{name}.txt not found (have: {', '.join(have)})")
    return Template(path.read_text())


def chat(name: str) -> tuple[str, Template]:
    """A two-part template: the system message, a line ``---``, the user message."""
    system, _, user = template(name).template.partition(SYSTEM_SEPARATOR)
    return system.strip(), Template(user.strip())
