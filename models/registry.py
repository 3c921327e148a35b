"""Registries: a set of names, declared once, bound to one implementation per name.

A registry's names are a ``Literal`` (what a config field accepts, so pydantic rejects any
other name when the run config loads, naming the field) declared in a module that both the
config and the implementation import; the implementation's table is built with ``bind``, which
fails at import when the table and the names disagree. A name is thus never accepted without an
implementation, nor an implementation left unreachable, and dispatch needs no fall-through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def bind(what: str, names: Iterable[str], table: Mapping[str, T]) -> dict[str, T]:
    """``table`` itself, once its keys are exactly ``names``; else a TypeError naming the difference."""
    declared = set(names)
    missing, unknown = sorted(declared - table.keys()), sorted(table.keys() - declared)
    if missing or unknown:
        raise TypeError(f"{what}: names without an implementation {missing}, implementations without a name {unknown}")
    return dict(table)
