"""The one lesion vocabulary: which box labels are lesions (the localizer) and which words name a
finding (the rules judge).

A label is a lesion when it holds a term as whole words in any common English or Latin plural
("Lung Nodules", "opacities", "calculi", "stenoses"), also written without spaces ("LiverCancer",
"livercancer") - unless the label negates it ("No Tumor", "Stone Free Kidney", "without effusion",
"notumor"). Organs ("Liver", "Left Lung") and devices ("Support Devices") are not lesions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# Tier of each term, as the rules judge weighs a change of it: critical (acute, treatment-changing
# or malignant) or finding. Singular forms; plurals are derived (word_forms).
CRITICAL = (
    "lesion",
    "tumor",
    "tumour",
    "cancer",
    "carcinoma",
    "neoplasm",
    "malignancy",
    "metastasis",
    "mass",
    "nodule",
    "glioma",
    "glioblastoma",
    "meningioma",
    "lymphoma",
    "sarcoma",
    "melanoma",
    "adenoma",
    "pneumonia",
    "pneumothorax",
    "pneumoperitoneum",
    "effusion",
    "edema",
    "oedema",
    "cardiomegaly",
    "enlarged cardiomediastinum",
    "consolidation",
    "hemorrhage",
    "haemorrhage",
    "hematoma",
    "haematoma",
    "bleed",
    "fracture",
    "abscess",
    "infarct",
    "infarction",
    "ischemia",
    "ischaemia",
    "stroke",
    "aneurysm",
    "dissection",
    "thrombus",
    "thrombosis",
    "embolism",
    "embolus",
    "obstruction",
    "perforation",
    "herniation",
    "appendicitis",
    "cholecystitis",
    "tuberculosis",
)
FINDING = (
    "cyst",
    "polyp",
    "atelectasis",
    "infiltration",
    "infiltrate",
    "opacity",
    "fibrosis",
    "emphysema",
    "granuloma",
    "calcification",
    "stone",
    "calculus",
    "stenosis",
    "hernia",
    "ulcer",
    "lymphadenopathy",
    "hydronephrosis",
    "hydrocephalus",
    "ascites",
    "necrosis",
    "scarring",
    "pleural thickening",
    "hemangioma",
    "haemangioma",
)
LESION_TERMS = CRITICAL + FINDING

# Words before a term that deny it ("No Tumor", "negative for effusion"); "free" after it ("Stone
# Free Kidney", "tumour-free") or "free of" before it deny it too. "Free air" stays a finding.
NEGATING = frozenset({"no", "not", "without", "negative", "absent", "absence", "none"})
COMPOUND_MIN = 3  # a term found inside a longer word needs at least this many letters before it


def word_forms(word: str) -> set[str]:
    """A term word and its plurals: -s, -es, -y/-ies, -us/-i, -is/-es, -a/-ae, -oma/-omata."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("us"):
        forms.add(word[:-2] + "i")
    if word.endswith("is"):
        forms.add(word[:-2] + "es")
    if word.endswith("a"):
        forms.add(word + "e")
    if word.endswith("oma"):
        forms.add(word + "ta")
    return forms


def label_words(text: str) -> list[str]:
    """Lower-case words of a label; camel case is split first ("LiverCancer" -> liver, cancer)."""
    return re.findall(r"[a-z0-9]+", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", text).lower())


class LesionVocabulary:
    """Finds lesion terms in a label, respecting negation (module docstring)."""

    def __init__(self, terms: Iterable[str] = LESION_TERMS):
        self.terms = [[word_forms(word) for word in label_words(term)] for term in terms]
        self.terms = [term for term in self.terms if term]
        # Longest first, so a compound splits the same way every run ("lymphoedema": lymph + oedema).
        forms = set().union(*(term[0] for term in self.terms if len(term) == 1))
        self.single = sorted(forms, key=lambda form: (-len(form), form))
        self.known = frozenset(forms)

    def is_lesion(self, label: str) -> bool:
        words = self._split_compounds(label_words(label))
        return any(not self._negated(words, start, end) for start, end in self._matches(words))

    def _split_compounds(self, words: list[str]) -> list[str]:
        """ "livercancer" -> liver, cancer; "notumor" -> no, tumor: a word ending in a one-word term."""
        out: list[str] = []
        for word in words:
            for form in self.single:
                if word not in self.known and word.endswith(form) and len(word) - len(form) >= 2:
                    prefix = word[: -len(form)]
                    if prefix == "no" or len(prefix) >= COMPOUND_MIN:
                        out += [prefix, form]
                        break
            else:
                out.append(word)
        return out

    def _matches(self, words: Sequence[str]) -> list[tuple[int, int]]:
        return [
            (i, i + len(term))
            for term in self.terms
            for i in range(len(words) - len(term) + 1)
            if all(word in forms for word, forms in zip(words[i : i + len(term)], term))
        ]

    @staticmethod
    def _negated(words: Sequence[str], start: int, end: int) -> bool:
        before = words[:start]
        return bool(NEGATING & set(before)) or words[end : end + 1] == ["free"] or before[-2:] == ["free", "of"]


def finding_words(tier: str) -> frozenset[str]:
    """Every form of the one-word terms of a tier (critical | finding), and the head word of its
    multi-word terms ("thickening"), for the rules judge's word-level weights."""
    terms = CRITICAL if tier == "critical" else FINDING
    return frozenset().union(*(word_forms(label_words(term)[-1]) for term in terms))
