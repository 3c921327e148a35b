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
    # Number words are digits, as LLaVA-Med's scorer reads them, on either side.
    assert metrics.token_recall("two lesions", "2") == 1.0
    assert metrics.token_recall("There are 3 nodules", "three nodules") == 1.0
    assert metrics.token_recall("twenty", "2") == 0.0
    assert metrics.exact_match("The Liver.", "liver")
    assert not metrics.exact_match("liver lesion", "liver")


def test_bleu_single_report_by_hand() -> None:
    # hyp "the heart is big in size" vs ref "the heart is normal in size", both 6 words (BP = 1):
    # 1-grams 5/6, 2-grams {the heart, heart is, in size} 3/5, 3-grams {the heart is} 1/4, 4-grams 0/3.
    b1, b2, b3, b4 = metrics.bleu_scores(["the heart is big in size"], ["the heart is normal in size"])
    assert b1 == pytest.approx(5 / 6, abs=1e-6)
    assert b2 == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert b3 == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3), abs=1e-6)
    assert b4 < 1e-3  # no matching 4-gram; pycocoevalcap smooths 0 to ~1e-15 before the root


def test_bleu_is_corpus_level_with_brevity_penalty() -> None:
    # unigram matches 4 + 1 of 4 + 2 hypothesis words; hypothesis 6 words vs reference 4 + 3 = 7:
    # BP = exp(1 - 7/6).
    b1, *_ = metrics.bleu_scores(["the heart is normal", "no effusion"], ["the heart is normal", "small left effusion"])
    assert b1 == pytest.approx(math.exp(1 - 7 / 6) * 5 / 6, abs=1e-6)


def test_rouge_l_is_cocos_f_with_beta_1_2() -> None:
    # LCS(the heart is big in size, the heart is normal in size) = 5 of 6 each way: P = R = 5/6, so F = 5/6.
    assert metrics.rouge_l(["the heart is big in size"], ["the heart is normal in size"]) == pytest.approx([5 / 6])
    # LCS 2: P = 2/2, R = 2/6; F = (1 + 1.2^2) P R / (R + 1.2^2 P) = 0.4586 (rouge-score's F1 would say 0.5).
    (score,) = metrics.rouge_l(["heart normal"], ["the heart is normal in size"])
    assert score == pytest.approx(2.44 * (1 / 3) / (1 / 3 + 1.44))
    assert score == pytest.approx(0.4586, abs=1e-4)


@pytest.mark.skipif(not JAVA, reason="the PTB tokenizer needs Java")
def test_ptb_tokenizer_as_pycocoevalcap() -> None:
    texts = ["The heart (normal) is big, in size.", "No effusion.\nNo pneumothorax!", "", "T1-weighted: 3 cm mass"]
    # PTB splits punctuation, lower-cases, and its -LRB- becomes -lrb- (kept: the filter knows only -LRB-).
    assert metrics.ptb_tokenize(texts) == [
        "the heart -lrb- normal -rrb- is big in size",
        "no effusion no pneumothorax",
        "",
        "t1-weighted 3 cm mass",
    ]


REPORTS = [
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion (new). No focal consolidation.",
    "Lungs are hyperinflated; no acute cardiopulmonary abnormality.",
    "Heart size normal. Right lower lobe opacity, possibly pneumonia. No effusion.",
]
PREDICTIONS = [
    "Heart size is normal. Lungs are clear. No effusion.",
    "Cardiomegaly with a small left effusion. No consolidation.",
    "The lungs are clear. No acute abnormality.",
    "Normal heart. Opacity in the right lower lobe, likely pneumonia.",
]


@pytest.mark.slow
@pytest.mark.skipif(not JAVA, reason="pycocoevalcap's tokenizer and METEOR need Java")
def test_report_metrics_equal_pycocoevalcaps_own_pipeline() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The R2Gen evaluation: gts/res as {id: [{"caption": text}]}, PTB-tokenized, then each scorer.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r}] for i, r in enumerate(REPORTS)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, each = Rouge().compute_score(gts, res)
    scorer = Meteor()
    meteor, _ = scorer.compute_score(gts, res)
    scorer.meteor_p.kill()

    ours = metrics.report_scores(PREDICTIONS, REPORTS)
    assert [ours.bleu_1, ours.bleu_2, ours.bleu_3, ours.bleu_4] == pytest.approx(bleu, abs=1e-12)
    assert ours.rouge_l == pytest.approx(rouge, abs=1e-12) and ours.rouge_l_each == pytest.approx(list(each))
    assert ours.meteor == pytest.approx(meteor, abs=1e-4)
    assert ours.bleu == pytest.approx(sum(bleu) / 4)
    assert 0.2 < ours.rouge_l < 0.8 and ours.errors == {}


@pytest.mark.slow
@pytest.mark.skipif(not JAVA, reason="METEOR's jar needs Java")
def test_meteor_by_hand() -> None:
    # All three words are content words, exact matches only: P = 2/2, R = 2/3,
    # Fmean = PR / (0.85 P + 0.15 R) = (2/3) / 0.95; one chunk over 2 matches:
    # Pen = 0.6 * (1/2) ** 0.2; score = Fmean * (1 - Pen).
    expected = (2 / 3) / 0.95 * (1 - 0.6 * 0.5**0.2)
    assert metrics.meteor(["heart normal"], ["heart normal size"]) == pytest.approx(expected, abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif(not JAVA, reason="the PTB tokenizer and METEOR need Java")
def test_report_scores_bundle() -> None:
    scores = metrics.report_scores(
        ["the heart is normal in size", "The lungs are clear.\nNo effusion."],
        ["the heart is normal in size", "the lungs are clear. no effusion."],
    )
    # identical after tokenization (a newline inside a report must not split it)
    assert scores.as_dict() == pytest.approx(
        {"bleu_1": 1.0, "bleu_2": 1.0, "bleu_3": 1.0, "bleu_4": 1.0, "bleu": 1.0, "rouge_l": 1.0, "meteor": 1.0},
        abs=1e-6,
    )
    assert scores.errors == {} and scores.rouge_l_each == [1.0, 1.0]


def test_report_metrics_without_java_are_reported_not_raised(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    scores = metrics.report_scores(["the heart is big in size"], ["the heart is normal in size"])
    assert scores.as_dict() == dict.fromkeys(("bleu_1", "bleu_2", "bleu_3", "bleu_4", "bleu", "rouge_l", "meteor"))
    assert set(scores.errors) == {"bleu", "rouge_l", "meteor"}
    assert all("needs Java" in message for message in scores.errors.values())
    assert set(metrics.report_scores(["a"], ["b"], with_meteor=False).errors) == {"bleu", "rouge_l"}
