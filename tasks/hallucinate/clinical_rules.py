"""Offline clinical perturbations: turn a ground-truth answer into a plausible wrong one.

Each rule proposes candidate rewrites of the text, each a single clinically meaningful error
(a flipped negation, a swapped side, a confusable finding, a changed grade or count, a
swapped organ or modality, a flipped yes/no). ``perturb`` picks among them deterministically
from a seed string (the sample id), so a re-run produces the same rejection and the choice
is spread evenly over the error types that apply. The lexicons target chest X-ray reports
and radiology VQA (SLAKE, VQA-RAD); a text no rule applies to yields no candidate rather than
a fabricated one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from tasks.hallucinate import clinical_lexicon as lexicon
from tasks.hallucinate.clinical_text import (
    Candidate,
    in_negated_scope,
    match_case,
    replace_span,
    sentences,
    words_pattern,
)
from tasks.store import content_hash

# --- findings -------------------------------------------------------------------------------

FINDING_RE = re.compile(rf"\b(?:{words_pattern(lexicon.FINDINGS)})\b", re.IGNORECASE)


# Descriptors between a negator and the finding. Kept when the finding is made present
# (they are clinical: acute, focal, large) unless purely epistemic (evidence of, definite).
KEPT_MODIFIERS = ("acute", "focal", "large", "displaced", "confluent", "suspicious", "new", "significant")
DROPPED_MODIFIERS = (
    "evidence of",
    "radiographic evidence of",
    "signs of",
    "definite",
    "visible",
    "gross",
    "overt",
    "other",
    "obvious",
    "appreciable",
    "convincing",
)
LATERALITY_WORDS = ("left", "right", "bilateral", "left-sided", "right-sided", "bibasilar", "basilar")
MODIFIER = rf"(?:{words_pattern(KEPT_MODIFIERS + DROPPED_MODIFIERS + LATERALITY_WORDS)})"
NEGATED_FINDING_RE = re.compile(
    rf"\b(?P<lead>there\s+(?:is|are)\s+no|no|without)\s+(?P<mods>(?:{MODIFIER}\s+)*)(?P<finding>{words_pattern(lexicon.FINDINGS)})\b"
    rf"(?P<tail>\s*,\s*(?:or\s+|and\s+)?|\s+(?:or|nor|and)\s+)?",
    re.IGNORECASE,
)


def negation_flips(text: str) -> list[Candidate]:
    """'No pleural effusion' -> 'Small pleural effusion'; 'Small right pleural effusion.' -> 'No pleural effusion.'"""
    found: list[Candidate] = []
    for match in NEGATED_FINDING_RE.finditer(text):
        finding = match.group("finding")
        qualifier, _ = lexicon.FINDINGS[finding.lower()]
        mods = [m for m in re.split(r"\s+", match.group("mods").strip()) if m]
        kept = [m for m in mods if m.lower() in KEPT_MODIFIERS]
        sides = [m for m in mods if m.lower() in LATERALITY_WORDS]
        # 'evidence of' etc. split into words here; only the clinical single words survive, as intended.
        words = " ".join([*(kept or [qualifier] if qualifier or kept else []), *sides])
        lead = match.group("lead").lower()
        if lead.startswith("there"):
            article = "an" if (words or finding)[:1].lower() in "aeiou" else "a"
            plural = finding.lower().endswith("s") and not finding.lower().endswith("sis")
            subject = f"{'' if plural else article + ' '}{words + ' ' if words else ''}{finding}"
            present = f"there {'are' if plural else 'is'} {subject}"
        elif lead == "without":
            present = f"with {words + ' ' if words else ''}{finding}"
        else:
            present = f"{words + ' ' if words else ''}{finding}"
        # The rest of a negated list stays negated: "No A, B or C." -> "Small A. No B or C."
        rest = ". No " if match.group("tail") else ""
        replacement = match_case(match.group(0), present) + rest
        found.append(Candidate("negation", text[: match.start()] + replacement + text[match.end() :]))
    found.extend(_affirmative_to_negated(text))
    return found


SEVERITY_WORDS = (
    "small",
    "large",
    "tiny",
    "mild",
    "moderate",
    "severe",
    "minimal",
    "trace",
    "moderate-sized",
    "small-to-moderate",
    "moderate-to-large",
    "mildly",
    "minimally",
)
PRESENT_PREFIX_RE = re.compile(
    rf"^(?P<space>\s*)(?P<there>there\s+(?:is|are)\s+)?(?:(?:a|an)\s+)?"
    rf"(?:(?:stable|persistent|new|unchanged|redemonstrated|increased|decreased|again\s+seen)\s+)?"
    rf"(?:(?:{words_pattern(SEVERITY_WORDS)})\s+)?(?:(?:{words_pattern(LATERALITY_WORDS)})\s+)?"
    rf"(?P<finding>{words_pattern(lexicon.FINDINGS)})\b",
    re.IGNORECASE,
)


def _affirmative_to_negated(text: str) -> list[Candidate]:
    found = []
    for start, sentence in sentences(text):
        match = PRESENT_PREFIX_RE.match(sentence)
        if not match or lexicon.FINDINGS[match.group("finding").lower()][0] == "":
            continue  # 'Acute cardiopulmonary process' is already the negated form's flip target, not a finding
        there = "there is " if match.group("there") else ""
        negated = match.group("space") + match_case(sentence.lstrip(), f"{there}no {match.group('finding').lower()}")
        found.append(
            Candidate("negation", text[:start] + negated + sentence[match.end() :] + text[start + len(sentence) :])
        )
    return found


def finding_substitutions(text: str) -> list[Candidate]:
    """Replace a mentioned finding with a confusable one (atelectasis <-> consolidation, nodule <-> mass)."""
    lowered = text.lower()
    found = []
    for match in FINDING_RE.finditer(text):
        if in_negated_scope(text, match.start()):
            continue
        for substitute in lexicon.FINDINGS[match.group(0).lower()][1]:
            if substitute in lowered:
                continue  # 'No effusion or effusion' would be nonsense, not a hallucination
            found.append(Candidate("finding_substitution", replace_span(text, match.start(), match.end(), substitute)))
    return found


# --- normal <-> abnormal statements -----------------------------------------------------------

NORMAL_PREDICATE = r"(?:normal|within\s+normal\s+limits|unremarkable|stable|normal\s+in\s+size)"
NORMAL_TAIL = r"(?:\s+(?:for|in)\s+size(?:\s+and\s+(?:contour|configuration|shape))?|\s+in\s+size)?"
CARDIAC_SUBJECT = (
    r"heart\s+size|heart|cardiac\s+silhouette|cardiomediastinal\s+silhouette|cardiac\s+size|cardiac\s+contours?"
)
NORMALITY_FLIPS: list[tuple[re.Pattern[str], str]] = [
    # "Heart size and pulmonary vascularity (are) within normal limits": only the heart is made abnormal.
    (
        re.compile(
            rf"\b({CARDIAC_SUBJECT})\s+and\s+((?:the\s+)?[a-z]+(?:\s+[a-z]+)?)\s+(are\s+)?{NORMAL_PREDICATE}{NORMAL_TAIL}",
            re.IGNORECASE,
        ),
        r"\1 is enlarged; the \2 is normal",
    ),
    (
        re.compile(
            rf"\b(heart\s+size|heart|cardiac\s+silhouette|cardiomediastinal\s+silhouette|cardiac\s+size|cardiac\s+contours?)"
            rf"\s+(is|are|appears|remains)\s+{NORMAL_PREDICATE}{NORMAL_TAIL}",
            re.IGNORECASE,
        ),
        r"\1 \2 enlarged",
    ),
    (
        re.compile(
            rf"\b(heart\s+size|cardiomediastinal\s+silhouette|cardiac\s+silhouette)\s+{NORMAL_PREDICATE}\b",
            re.IGNORECASE,
        ),
        r"\1 enlarged",
    ),
    (
        re.compile(r"\bnormal\s+(heart\s+size|cardiac\s+silhouette|cardiomediastinal\s+silhouette)", re.IGNORECASE),
        r"enlarged \1",
    ),
    (
        re.compile(
            rf"\b(mediastinal\s+contours?|mediastinum|mediastinal\s+silhouette)\s+(is|are|appears)\s+{NORMAL_PREDICATE}",
            re.IGNORECASE,
        ),
        r"\1 \2 widened",
    ),
    (
        re.compile(
            rf"\b(pulmonary\s+vascularity|pulmonary\s+vasculature)\s+(is|are|appears)\s+{NORMAL_PREDICATE}",
            re.IGNORECASE,
        ),
        r"\1 \2 increased",
    ),
    (
        re.compile(r"\b(lungs?)\s+(are|is)\s+clear\b", re.IGNORECASE),
        r"\1 \2 hyperinflated with patchy bibasilar opacities",
    ),
    (re.compile(r"\b(lungs?)\s+clear\b", re.IGNORECASE), r"\1 with patchy bibasilar opacities"),
    (re.compile(r"\bnormally\s+inflated\b", re.IGNORECASE), "hyperinflated"),
    (re.compile(r"\bwell[-\s]+(?:expanded|aerated)\b", re.IGNORECASE), "hyperexpanded"),
    (
        re.compile(
            r"\b(osseous\s+structures|bony\s+structures|visualized\s+osseous\s+structures|bones)\s+(are|appear)\s+"
            r"(?:intact|normal|unremarkable)",
            re.IGNORECASE,
        ),
        r"\1 \2 notable for an acute rib fracture",
    ),
]


def normality_flips(text: str) -> list[Candidate]:
    found = []
    for pattern, replacement in NORMALITY_FLIPS:
        for match in pattern.finditer(text):
            new = match_case(match.group(0), match.expand(replacement))
            found.append(Candidate("normality_flip", text[: match.start()] + new + text[match.end() :]))
    return found


# --- simple word swaps ------------------------------------------------------------------------


def _word_swaps(
    error_type: str, table: dict[str, str], affirmative_only: bool = True
) -> Callable[[str], list[Candidate]]:
    pattern = re.compile(rf"(?<![\w-])(?:{words_pattern(table)})(?![\w-])", re.IGNORECASE)

    def rule(text: str) -> list[Candidate]:
        return [
            Candidate(
                error_type, replace_span(text, m.start(), m.end(), table[re.sub(r"\s+", " ", m.group(0).lower())])
            )
            for m in pattern.finditer(text)
            if not (affirmative_only and in_negated_scope(text, m.start()))
        ]

    rule.__name__ = error_type
    return rule


laterality_swaps = _word_swaps("laterality", lexicon.LATERALITY)
severity_changes = _word_swaps("severity", lexicon.SEVERITY)
progression_changes = _word_swaps("progression", lexicon.PROGRESSION)
organ_swaps = _word_swaps("organ_swap", lexicon.ORGANS, affirmative_only=False)
modality_swaps = _word_swaps("modality_swap", lexicon.MODALITIES, affirmative_only=False)
plane_swaps = _word_swaps("plane_swap", lexicon.PLANES, affirmative_only=False)

COUNT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COUNTED_NOUN = (
    r"(?:nodules?|masses|lesions?|ribs?|fractures?|granulomas?|calcifications?|lobes?|kidneys?|lungs?|cysts?|foci"
    r"|opacities|effusions?)"
)
MEASURE_RE = re.compile(r"\b(\d+(?:\.\d+)?)(\s*(?:cm|mm|centimeters?|millimeters?)\b)", re.IGNORECASE)
COUNT_WORD_RE = re.compile(
    rf"\b({'|'.join(COUNT_WORDS)}|single|multiple|several)(\s+(?:\w+\s+)?{COUNTED_NOUN}\b)", re.IGNORECASE
)
NUMBER_ONLY_RE = re.compile(r"^\s*(\d+)\s*$")


def size_count_changes(text: str) -> list[Candidate]:
    """'2 cm' -> '4 cm', 'two nodules' -> 'three nodules', a numeric VQA answer '2' -> '3'."""
    found = []
    whole = NUMBER_ONLY_RE.match(text)
    if whole:
        n = int(whole.group(1))
        found.append(Candidate("size_count", text.replace(whole.group(1), str(n + 1), 1)))
        if n > 0:
            found.append(Candidate("size_count", text.replace(whole.group(1), str(n - 1), 1)))
    word_only = text.strip().lower()
    if word_only in COUNT_WORDS:
        i = COUNT_WORDS.index(word_only)
        found.append(
            Candidate("size_count", match_case(text.strip(), COUNT_WORDS[i + 1 if i + 1 < len(COUNT_WORDS) else i - 1]))
        )
    for m in MEASURE_RE.finditer(text):
        value = float(m.group(1))
        decimals = len(m.group(1).split(".")[1]) if "." in m.group(1) else 0
        new = f"{value * 2:.{decimals}f}"
        found.append(Candidate("size_count", text[: m.start(1)] + new + text[m.end(1) :]))
    for m in COUNT_WORD_RE.finditer(text):
        word = m.group(1).lower()
        if word in ("single", "one"):
            new = "multiple"
        elif word in ("multiple", "several"):
            new = "a single"
        else:
            i = COUNT_WORDS.index(word)
            new = COUNT_WORDS[i + 1] if i + 1 < len(COUNT_WORDS) else COUNT_WORDS[i - 1]
        found.append(Candidate("size_count", replace_span(text, m.start(1), m.end(1), new)))
    return found


YES, NO = "yes", "no"


def yes_no_flip(text: str) -> list[Candidate]:
    stripped = text.strip()
    word = stripped.lower().rstrip(".")
    if word not in (YES, NO):
        return []
    return [Candidate("yes_no_flip", match_case(stripped, NO if word == YES else YES))]


# --- choosing ----------------------------------------------------------------------------------

REPORT_RULES = (
    negation_flips,
    normality_flips,
    laterality_swaps,
    finding_substitutions,
    severity_changes,
    size_count_changes,
    progression_changes,
)
VQA_RULES = (
    yes_no_flip,
    negation_flips,
    laterality_swaps,
    finding_substitutions,
    severity_changes,
    size_count_changes,
    organ_swaps,
    modality_swaps,
    plane_swaps,
)
ERROR_TYPES = (
    "yes_no_flip",
    "negation",
    "normality_flip",
    "laterality",
    "finding_substitution",
    "severity",
    "size_count",
    "progression",
    "organ_swap",
    "modality_swap",
    "plane_swap",
)


def normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def candidates(text: str, task: str) -> list[Candidate]:
    """Every single-error rewrite the rules offer, content-changing ones only, without duplicates."""
    yes_no = yes_no_flip(text)
    if yes_no:
        return yes_no  # a closed yes/no answer has exactly one wrong answer
    rules = REPORT_RULES if task == "report" else VQA_RULES
    seen = {normalized(text)}
    found = []
    for rule in rules:
        for candidate in rule(text):
            key = normalized(candidate.text)
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def ordered(found: list[Candidate], seed: str) -> list[Candidate]:
    """Candidates in a deterministic, seed-dependent order: a random error type first, then
    a random candidate of it, so every applicable error type is equally likely to be chosen."""
    rng = random.Random(content_hash("clinical_rules", seed))
    by_type: dict[str, list[Candidate]] = {}
    for candidate in found:
        by_type.setdefault(candidate.error_type, []).append(candidate)
    types = sorted(by_type)
    rng.shuffle(types)
    result = []
    for error_type in types:
        group = by_type[error_type]
        rng.shuffle(group)
        result.extend(group)
    return result
