"""Text primitives the clinical rules share: a candidate rewrite, case-preserving replacement,
phrase alternations, and NegEx-style negation scope (is this word negated in its sentence?)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    error_type: str
    text: str


def match_case(source: str, replacement: str) -> str:
    if len(source) > 1 and source.isupper():
        return replacement.upper()
    if " " in source and source.istitle() and replacement.islower():
        return replacement.title()  # VQA answers such as "Brain Edema"
    if source[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def words_pattern(options: Iterable[str]) -> str:
    """A regex alternation matching whole words/phrases, longest first (so 'pleural effusion' beats 'effusion')."""
    return "|".join(re.escape(o).replace(r"\ ", r"\s+") for o in sorted(options, key=len, reverse=True))


def replace_span(text: str, start: int, end: int, replacement: str) -> str:
    return text[:start] + match_case(text[start:end], replacement) + text[end:]


NEGATORS = r"no|without|negative\s+for|free\s+of|absence\s+of|not|nor|resolved|resolution\s+of|clear\s+of"
NEGATOR_RE = re.compile(rf"\b(?:{NEGATORS})\b", re.IGNORECASE)
# Words after which a negation no longer reaches (NegEx-style scope terminators).
SCOPE_END_RE = re.compile(r"\b(?:but|however|although|though|except|which|with\s+the\s+exception)\b|;", re.IGNORECASE)
SENTENCE_RE = re.compile(r"[^.!?\n]+[.!?]*")


def is_negated(sentence: str, position: int) -> bool:
    before = sentence[:position]
    ends = [m.end() for m in SCOPE_END_RE.finditer(before)]
    scope = before[max(ends, default=0) :]
    return NEGATOR_RE.search(scope) is not None


def sentences(text: str) -> Iterable[tuple[int, str]]:
    for match in SENTENCE_RE.finditer(text):
        yield match.start(), match.group(0)


def in_negated_scope(text: str, position: int) -> bool:
    """Is the word at ``position`` inside a negation ('No acute X', 'without A, B or C')?

    Swapping a negated word ('No left effusion' -> 'No right effusion') asserts nothing the
    image could contradict, so such rewrites are not offered as hallucinations.
    """
    for start, sentence in sentences(text):
        if start <= position < start + len(sentence):
            return is_negated(sentence, position - start)
    return False
