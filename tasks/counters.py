"""Every stage's counters, named one way: ``<what>.<outcome>`` and ``<what>.<outcome>.<reason>``.

``what`` is the thing counted (``samples``, ``pairs``, ``text``, ``judge[med42]`` - a bracket
qualifies it), ``outcome`` what became of it (``kept``, ``rejected``, ``ok``, ``failed``) and
``reason`` why, when there is one. Counting with a reason counts the outcome too, so totals
never need adding up by hand. Measured values (statistics, training metrics) use the same
three parts: ``text.weight.mean``, ``train.loss.final``.

The *headline* of a stage - what the CLI prints after a run - is its unqualified
two-part counters: ``samples.kept``, not ``samples.rejected.missing_image`` nor
``samples[slake].kept``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/\[\]]+")


def part(text: object) -> str:
    """One name part: dots and spaces (and anything else odd) become underscores."""
    cleaned = _UNSAFE.sub("_", str(text).strip()).strip("_")
    return cleaned or "none"


def name(what: str, outcome: str, reason: object | None = None) -> str:
    parts = [what, part(outcome)] + ([part(reason)] if reason not in (None, "") else [])
    return ".".join(parts)


def qualified(what: str, qualifier: object) -> str:
    """``samples`` of data set ``slake`` -> ``samples[slake]``."""
    return f"{what}[{part(qualifier)}]"


class Counters:
    """A stage's counters while it runs; ``as_dict()`` goes into its manifest."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, what: str, outcome: str, reason: object | None = None, n: float = 1) -> None:
        """Count ``n`` of ``what`` with this outcome (and reason, which counts the outcome too)."""
        self._bump(name(what, outcome), n)
        if reason not in (None, ""):
            self._bump(name(what, outcome, reason), n)

    def set(self, what: str, outcome: str, reason: object | None = None, value: float = 0.0) -> None:
        """A measured value (a statistic, a metric), not a count."""
        self.values[name(what, outcome, reason)] = float(value)

    def update(self, other: Mapping[str, float]) -> None:
        merge(self.values, other)

    def _bump(self, key: str, n: float) -> None:
        self.values[key] = self.values.get(key, 0.0) + n

    def as_dict(self) -> dict[str, float]:
        return {key: float(value) for key, value in sorted(self.values.items())}


def merge(total: dict[str, float], more: Mapping[str, float]) -> dict[str, float]:
    """Add ``more``'s counts into ``total`` (e.g. shards' counters into their build's)."""
    for key, value in more.items():
        total[key] = total.get(key, 0) + value
    return total


def headline(counts: Mapping[str, float]) -> dict[str, float]:
    """The counters a person reads first: unqualified ``<what>.<outcome>`` ones, in order."""
    return {key: value for key, value in counts.items() if key.count(".") == 1 and "[" not in key}


def reasons(counts: Mapping[str, float], what: str, outcome: str) -> dict[str, float]:
    """``reason -> count`` under one ``<what>.<outcome>``."""
    prefix = f"{what}.{outcome}."
    return {key[len(prefix) :]: value for key, value in counts.items() if key.startswith(prefix)}


class NothingKept(RuntimeError):
    """A stage kept nothing: the run fails, naming why, and nothing after it is stored or published."""


def require_some(stage: str, counts: Mapping[str, float], kept: str, losses: Sequence[tuple[str, str]]) -> None:
    """Raise NothingKept when counter ``kept`` is 0, naming the top reasons under ``losses``
    (``(what, outcome)`` pairs, e.g. ``("samples", "rejected")``)."""
    if counts.get(kept, 0) > 0:
        return
    found = {
        f"{what}.{outcome}.{reason}": n
        for what, outcome in losses
        for reason, n in reasons(counts, what, outcome).items()
    }
    top = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:3]
    why = ", ".join(f"{name} {n:g}" for name, n in top) or "no input at all"
    raise NothingKept(f"{stage}: 0 {kept.partition('.')[0]} kept ({why}); nothing is published")


def rows(counts: Mapping[str, float]) -> list[dict[str, object]]:
    """The counters as table rows (the UI's counter tables)."""
    return [{"counter": key, "value": value} for key, value in sorted(counts.items())]
