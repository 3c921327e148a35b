"""Code versions derived from the import graph, not from hand-kept lists.

A stage's code version hashes every first-party module it imports, transitively (function-level
imports included: they run too), the prompt templates of every package in that set, and the data
files it declares. A list typed by hand is forgotten when an import is added, and then a cache
hit serves what the older code computed.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("flows", "tasks", "models", "experiments")
# Data files a package's behaviour depends on (prompt templates) count as its code.
TEMPLATE_SUFFIX = ".txt"

# (path, size, mtime) -> the module names its source imports: a process computes every stage's
# version at import time, and most stages share most of their graph.
_PARSED: dict[tuple[Path, int, int], tuple[str, ...]] = {}


def code_version(*modules: str, data: Sequence[str] = (), root: Path = ROOT) -> str:
    """Hash of the named modules, everything first-party they import and their templates, plus
    the ``data`` files (paths relative to ``root``)."""
    digest = hashlib.sha256()
    for path in sorted(code_files(modules, root)) + sorted(root / name for name in data):
        if not path.is_file():
            raise FileNotFoundError(f"code_version: {path} not found (declared by {', '.join(modules)})")
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\x00")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_files(modules: Iterable[str], root: Path = ROOT) -> set[Path]:
    """The source files of ``modules`` and of every first-party module they import, transitively,
    with the templates beside each package's ``__init__.py``."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name, root)
        if path is None:
            if name in modules:
                raise ModuleNotFoundError(f"code_version: no module named {name!r} under {root}")
            continue
        files.add(path)
        if path.name == "__init__.py":
            files.update(p for p in path.parent.glob(f"*{TEMPLATE_SUFFIX}") if p.is_file())
        todo.extend(with_parents(imported_by(path, name)))
    return files


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The file of a first-party module, or None (a third-party module, or a name imported from a
    module that is not itself a module)."""
    parts = name.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    base = root.joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def with_parents(names: Iterable[str]) -> Iterator[str]:
    """Each name and the packages above it: importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    for name in names:
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            yield ".".join(parts[:end])


def imported_by(path: Path, name: str) -> tuple[str, ...]:
    """Every module name ``path`` (module ``name``) imports, anywhere in it; for ``from m import x``
    both ``m`` and ``m.x`` (which is dropped later unless it is a module)."""
    stat = path.stat()
    memo = (path, stat.st_size, stat.st_mtime_ns)
    if memo not in _PARSED:
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: list[str] = []
        for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                found.append(base)
                found.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        _PARSED[memo] = tuple(found)
    return _PARSED[memo]
