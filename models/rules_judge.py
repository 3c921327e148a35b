"""The offline rules judge: error type x clinical weight of what changed (table in docs/judges.md).

Deterministic and needing no model: the demo's default judge, and a fallback member of
any panel.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from models.judges import JudgeItem, Turn, Verdict
from models.lesions import finding_words

# Base relevance of each error type the rules hallucination backend records
# (tasks/hallucinate/clinical_rules.py ERROR_TYPES).
ERROR_TYPE_WEIGHTS: dict[str, float] = {
    "negation": 0.90,
    "yes_no_flip": 0.90,
    "normality_flip": 0.85,
    "laterality": 0.85,
    "finding_substitution": 0.85,
    "organ_swap": 0.70,
    "progression": 0.60,
    "size_count": 0.55,
    "modality_swap": 0.55,
    "severity": 0.45,
    "plane_swap": 0.35,
}
UNKNOWN_ERROR_TYPE_WEIGHT = 0.60  # LLM-selected or rewritten hallucinations carry no type
TYPE_SHARE = 0.5  # score = TYPE_SHARE * type weight + (1 - TYPE_SHARE) * change weight

TERM_CLASSES: dict[str, tuple[float, frozenset[str]]] = {
    # Lesion words from the one vocabulary the localizer uses too (models.lesions), and words that
    # describe a finding without naming a lesion.
    "critical_finding": (1.00, finding_words("critical")),
    "finding": (
        0.80,
        finding_words("finding")
        | frozenset(
            """
    calcified scar spondylosis degenerative osteophytes hyperinflation enlargement enlarged widened hyperinflated
    hyperexpanded collapse congestion fluid air gas dilation dilated atrophy""".split()
        ),
    ),
    "laterality": (
        0.85,
        frozenset(
            "left right bilateral bilaterally unilateral ipsilateral contralateral left-sided right-sided "
            "bibasilar".split()
        ),
    ),
    "organ": (
        0.70,
        frozenset(
            """
    lung lungs liver heart kidney kidneys spleen brain pancreas gallbladder bladder stomach colon bowel
    intestine aorta trachea esophagus oesophagus diaphragm mediastinum pleura spine rib ribs bone bones
    chest abdomen pelvis head neck skull thyroid prostate uterus ovary breast adrenal lobe hilum hilar
    cardiac pulmonary hepatic renal""".split()
        ),
    ),
    "modality": (
        0.60,
        frozenset("ct mri mr x-ray xray radiograph ultrasound sonography pet t1 t2 flair dwi contrast".split()),
    ),
    "progression": (
        0.60,
        frozenset(
            """
    increased decreased improved worsened improving worsening unchanged stable enlarging resolved persistent
    new chronic acute""".split()
        ),
    ),
    "count": (
        0.55,
        frozenset("one two three four five six seven eight nine ten single multiple several numerous".split()),
    ),
    "size_severity": (
        0.40,
        frozenset(
            """
    small large tiny huge mild moderate severe minimal marked trace slight extensive diffuse focal minor
    major normal abnormal mildly markedly moderately slightly minimally subtle massive borderline""".split()
        ),
    ),
    "plane": (0.35, frozenset("axial coronal sagittal transverse pa ap lateral".split())),
}
POLARITY_TERMS = frozenset("no not without absent negative none yes positive present".split())
POLARITY_FLOOR = 0.50  # a flipped negation weighs at least this, more when it flips a finding
OTHER_WEIGHT = 0.20
CONTEXT_WINDOW = 6  # tokens either side of a change that name what a negation flips

_TOKEN = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def term_class(token: str) -> tuple[str, float]:
    if token in POLARITY_TERMS:
        return "polarity", POLARITY_FLOOR
    for name, (weight, words) in TERM_CLASSES.items():
        if token in words:
            return name, weight
    if token.replace(".", "", 1).isdigit():
        return "count", TERM_CLASSES["count"][0]
    return "other", OTHER_WEIGHT


def _finding_weight(words: Sequence[str]) -> tuple[float, str | None]:
    best, which = 0.0, None
    for word in words:
        name, weight = term_class(word)
        if name in ("critical_finding", "finding") and weight > best:
            best, which = weight, word
    return best, which


def change_weight(item: JudgeItem) -> tuple[float, str]:
    """Clinical weight of the words that differ between ground truth and rejected, with why."""
    truth, wrong = tokens(item.answer), tokens(item.rejected)
    question = tokens(item.question)
    best, why = -1.0, ""
    matcher = difflib.SequenceMatcher(a=truth, b=wrong, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        for side, start, end, words in (("ground truth", a0, a1, truth), ("rejected", b0, b1, wrong)):
            for token in words[start:end]:
                name, weight = term_class(token)
                note = f"{name} '{token}' ({side})"
                if name == "polarity":
                    # A negation or yes/no weighs what it flips: the finding nearby, or the one
                    # asked about for short answers.
                    context = list(words[max(0, start - CONTEXT_WINDOW) : end + CONTEXT_WINDOW])
                    if len(truth) <= 3:
                        context += question
                    flipped, finding = _finding_weight(context)
                    if flipped > weight:
                        weight, note = flipped, f"polarity '{token}' flips '{finding}'"
                if weight > best:
                    best, why = weight, note
    if best < 0:
        return 0.0, "no clinical content changed"
    return best, why


def rules_score(item: JudgeItem) -> Verdict:
    if tokens(item.answer) == tokens(item.rejected):
        return Verdict(0.0, "rejected answer says the same as the ground truth", source="rules")
    type_weight = ERROR_TYPE_WEIGHTS.get(item.error_type or "", UNKNOWN_ERROR_TYPE_WEIGHT)
    weight, why = change_weight(item)
    score = round(TYPE_SHARE * type_weight + (1 - TYPE_SHARE) * weight, 4)
    kind = item.error_type or "untyped error"
    return Verdict(score, f"{kind} ({type_weight:.2f}); largest change: {why} ({weight:.2f})", source="rules")


class RulesJudge:
    """Deterministic, offline: re-scores with its own rule score; the debate's tolerance decides agreement."""

    def __init__(self, name: str = "rules"):
        self.name = name

    async def judge(self, item: JudgeItem, previous: Turn | None) -> Verdict:
        return rules_score(item)
