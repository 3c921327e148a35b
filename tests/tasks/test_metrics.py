"""Metrics against values worked out by hand (derivations in the comments)."""

from __future__ import annotations

import math
import shutil

import pytest

from tasks import metrics

JAVA = shutil.which("java") is not None


@pytest.mark.parametrize(
    ("prediction", "reference", "normalized", "substring"),
    [
        ("not sure", "no", False, True),  # the released rule's false positive
        ("Not sure, no effusion.", "no", False, True),
        ("No.", "no", True, True),
        ("NO, the lungs are clear", "no", True, True),
        ("Nope", "No", True, True),  # "no" is inside "nope"
        ("yes", "no", False, False),
        ("There is no effusion", "no", False, True),
        ("Yes", "yes", True, True),
        ("Correct.", "Yes", True, False),
        ("The liver", "liver", True, True),
        ("Liver and spleen", "liver", False, True),
        ("MRI", "CT", False, False),
        ("", "no", False, False),
    ],
)
def test_closed_rules(prediction: str, reference: str, normalized: bool, substring: bool) -> None:
    assert metrics.closed_correct(prediction, reference) is normalized
    assert metrics.substring_correct(prediction, reference) is substring


def test_normalize_answer() -> None:
    assert metrics.normalize_answer("  The Left-Lung!  ") == "left lung"
    assert metrics.normalize_answer("Yeah.") == "yes"
    assert metrics.normalize_answer("False") == "no"
    assert metrics.normalize_answer("no effusion") == "no effusion"


def test_open_recall_and_exact_match() -> None:
    # reference words {left, lung, apex}; the prediction has left and lung: 2/3.
    assert metrics.token_recall("A nodule in the left lung.", "left lung apex") == pytest.approx(2 / 3)
    # articles do not count towards the reference's words: {liver} found.
    assert metrics.token_recall("liver", "The liver") == 1.0
    assert metrics.token_recall("kidney", "liver") == 0.0
    assert metrics.token_recall("anything", "") == 0.0
    assert metrics.exact_match("The Liver.", "liver")
    assert not metrics.exact_match("liver lesion", "liver")


def test_bleu_single_report_by_hand() -> None:
    # hyp "the heart is big in size" vs ref "the heart is normal in size", both 6 words (BP = 1):
    # 1-grams 5/6, 2-grams {the heart, heart is, in size} 3/5, 3-grams {the heart is} 1/4, 4-grams 0/3.
    b1, b2, b3, b4 = metrics.bleu_scores(["The heart is big in size."], ["The heart is normal in size."])
    assert b1 == pytest.approx(5 / 6, abs=1e-6)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert b3 == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert b4 < 1e-3  # no matching 4-gram; pycocoevalcap smooths 0 to ~1e-15 before the root


def test_bleu_is_corpus_level_with_brevity_penalty() -> None:
    # unigram matches 4 + 1 of 4 + 2 hypothesis words; hypothesis 6 words vs reference 4 + 3 = 7:
    # BP = exp(1 - 7/6).
    b1, *_ = metrics.bleu_scores(["the heart is normal", "no effusion"], ["the heart is normal", "small left effusion"])
    assert b1 == pytest.approx(math.exp(1 - 7 / 6) * 5 / 6, abs=1e-6)


def test_rouge_l_by_hand() -> None:
    # LCS(the heart is big in size, the heart is normal in size) = 5 of 6 each way: F = 5/6.
    assert metrics.rouge_l(["the heart is big in size"], ["the heart is normal in size"]) == pytest.approx(5 / 6)
    # LCS 2: P = 2/2, R = 2/6, F = 2PR/(P+R) = 1/2; the mean over two reports is (5/6 + 1/2) / 2.
    both = metrics.rouge_l(
        ["the heart is big in size", "Heart normal."], ["the heart is normal in size", "The heart is normal in size."]
    )
    assert both == pytest.approx((5 / 6 + 1 / 2) / 2)


@pytest.mark.skipif(not JAVA, reason="METEOR's jar needs Java")
def test_meteor_by_hand() -> None:
    # All three words are content words, exact matches only: P = 2/2, R = 2/3,
    # Fmean = PR / (0.85 P + 0.15 R) = (2/3) / 0.95; one chunk over 2 matches:
    # Pen = 0.6 * (1/2) ** 0.2; score = Fmean * (1 - Pen).
    expected = (2 / 3) / 0.95 * (1 - 0.6 * 0.5**0.2)
    assert metrics.meteor(["Heart normal."], ["heart normal size"]) == pytest.approx(expected, abs=1e-9)


@pytest.mark.skipif(not JAVA, reason="METEOR's jar needs Java")
def test_report_scores_bundle() -> None:
    scores = metrics.report_scores(
        ["the heart is normal in size", "The lungs are clear.\nNo effusion."],
        ["the heart is normal in size", "the lungs are clear. no effusion."],
    )
    # identical after normalization (a newline inside a report must not split METEOR's segments)
    assert scores.as_dict() == pytest.approx(
        {"bleu_1": 1.0, "bleu_2": 1.0, "bleu_3": 1.0, "bleu_4": 1.0, "bleu": 1.0, "rouge_l": 1.0, "meteor": 1.0},
        abs=1e-6,
    )
    assert scores.errors == {}


def test_meteor_without_java_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    scores = metrics.report_scores(["the heart is big in size"], ["the heart is normal in size"])
    assert scores.meteor is None
    assert "METEOR needs Java" in scores.errors["meteor"]
    assert scores.bleu_1 == pytest.approx(5 / 6, abs=1e-6)
    assert scores.rouge_l == pytest.approx(5 / 6)
