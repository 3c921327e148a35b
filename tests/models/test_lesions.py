"""One lesion vocabulary: real label strings of SLAKE, VQA-RAD, MIMIC-CXR (CheXpert) and brain-MRI
sets, each marked lesion or not; the localizer and the rules judge read the same terms."""

from __future__ import annotations

import pytest

from models import rules_judge
from models.lesions import LESION_TERMS, LesionVocabulary, word_forms
from tasks.config import LocalizeConfig
from tasks.localize.regions import LesionLabels

LABELS = [
    # SLAKE detection.json labels
    ("Brain Edema", True),
    ("Brain Tumor", True),
    ("Brain Enhancing Tumor", True),
    ("Brain Non-enhancing Tumor", True),
    ("Liver Cancer", True),
    ("Lung Cancer", True),
    ("Kidney Cyst", True),
    ("Liver", False),
    ("Lung", False),
    ("Left Lung", False),
    ("Right Kidney", False),
    ("Heart", False),
    ("Spleen", False),
    ("Spinal Cord", False),
    ("Small Bowel", False),
    ("Brainstem", False),
    ("Temporal Lobe", False),
    ("Rectum", False),
    # ChestX-ray14 labels on SLAKE's chest X-rays
    ("Nodule", True),
    ("Mass", True),
    ("Atelectasis", True),
    ("Infiltration", True),
    ("Pleural Thickening", True),
    ("Hernia", True),
    ("Emphysema", True),
    ("Fibrosis", True),
    # MIMIC-CXR (CheXpert labeller)
    ("Enlarged Cardiomediastinum", True),
    ("Cardiomegaly", True),
    ("Lung Opacity", True),
    ("Lung Lesion", True),
    ("Pleural Effusion", True),
    ("Pneumothorax", True),
    ("Fracture", True),
    ("Support Devices", False),
    ("Pleural Other", False),
    ("No Finding", False),
    # VQA-RAD answers that name the finding in a box / region question
    ("glioma", True),
    ("subdural hematoma", True),
    ("lymphoma", True),
    ("tuberculosis", True),
    ("renal calculi", True),
    ("bilateral opacities", True),
    ("stenoses", True),
    ("ring-enhancing lesions", True),
    ("no", False),
    ("yes", False),
    # labels written without spaces, and negated labels
    ("LiverCancer", True),
    ("livercancer", True),
    ("notumor", False),
    ("No Tumor", False),
    ("Stone Free Kidney", False),
    ("tumour-free", False),
    ("no evidence of pneumothorax", False),
    ("free of effusion", False),
    ("Kidney Stones", True),
    ("Massive", False),
    ("", False),
]


def test_the_label_table_is_large_enough():
    assert len(LABELS) >= 40 and len({label for label, _ in LABELS}) == len(LABELS)


@pytest.mark.parametrize(("label", "lesion"), LABELS)
def test_a_label_is_a_lesion_exactly_when_it_names_an_unnegated_finding(label, lesion):
    assert LesionVocabulary().is_lesion(label) is lesion
    # The localizer's default test is the same vocabulary.
    assert LesionLabels(LocalizeConfig().lesion_terms)(label) is lesion


def test_latin_and_ies_plurals():
    assert {"calculi", "stenoses", "opacities", "metastases", "masses"} <= (
        word_forms("calculus")
        | word_forms("stenosis")
        | word_forms("opacity")
        | word_forms("metastasis")
        | word_forms("mass")
    )


def test_the_rules_judge_weighs_every_lesion_word_as_a_finding():
    for term in LESION_TERMS:
        head = term.split()[-1]
        name, _ = rules_judge.term_class(head)
        assert name in ("critical_finding", "finding"), term
    assert rules_judge.term_class("hematoma")[0] == "critical_finding"
    assert rules_judge.term_class("calculi")[0] == "finding"
