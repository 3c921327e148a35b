"""Weights that mean something with the defaults: judges whose scores sit far below the paper's fixed
mu = 1 still spread over [0.75, 1.25], and a run whose weights collapse says so."""

from __future__ import annotations

import numpy as np

from tasks import catalog
from tasks.catalog import SCORES
from tasks.config import NormalizerConfig, ScoreConfig
from tasks.score import counters
from tasks.score.weighting import apply_weights, collapse_alerts, collapse_notes

# Raw text scores as SmolLM2 judges gave them with every setting at its default (0.06-0.20, std ~0.047).
SMOLLM2_SCORES = [0.06, 0.07, 0.09, 0.11, 0.12, 0.14, 0.15, 0.17, 0.19, 0.20]


def rows(scores, pair_type="text"):
    return catalog.table(
        (
            {"sample_id": f"s{i}", "pair_type": pair_type, "status": "ok", "reason": "x", "raw_score": s, "rounds": []}
            for i, s in enumerate(scores)
        ),
        SCORES,
    )


def weighted(scores, config: ScoreConfig, pair_type="text"):
    return apply_weights(rows(scores, pair_type), config.normalizer, config.visual_normalizer)


def test_default_weights_spread_low_judge_scores():
    weights = weighted(SMOLLM2_SCORES, ScoreConfig()).column("weight").to_pylist()
    assert len(set(weights)) >= 5 and np.std(weights) > 0.03
    assert 0.75 <= min(weights) < 1.0 < max(weights) <= 1.25
    # Order kept: a more relevant error weighs more.
    assert weights == sorted(weights)


def test_the_papers_fixed_mapping_collapses_them_and_the_run_says_so():
    paper = ScoreConfig(normalizer=NormalizerConfig(kind="paper"))
    data = weighted(SMOLLM2_SCORES, paper)
    assert set(data.column("weight").to_pylist()) == {0.75}
    alerts = collapse_alerts(counters(data, paper))
    assert len(alerts) == 1
    assert "text weights collapsed (100% on the lower bound" in alerts[0]
    assert "raw scores 0.060-0.200" in alerts[0] and "score.normalizer" in alerts[0]
    # The default mapping of the same scores raises nothing.
    assert collapse_alerts(counters(weighted(SMOLLM2_SCORES, ScoreConfig()), ScoreConfig())) == []


def test_equal_visual_confidences_get_the_middle_weight_and_a_note_not_an_alert():
    """Annotated regions all have confidence 1.0: no ranking, so weight 1.0 (not the paper's top 1.25),
    and no mapping could spread them: the run says so as information, naming where they come from."""
    config = ScoreConfig()
    data = weighted([1.0] * 6, config, "visual")
    assert set(data.column("weight").to_pylist()) == {1.0}
    counts = counters(data, config)
    assert collapse_alerts(counts) == []
    (note,) = collapse_notes(counts)
    assert note.startswith("score: every visual pair has the same confidence (std 0.000 over 6 pairs")
    assert "raw scores 1.000-1.000" in note and "all weigh 1.000" in note
    assert "localize.annotation.confidence" in note and "score.visual_normalizer" in note


def test_collapses_that_are_not_by_design_stay_alerts():
    # Varied visual confidences that the paper's fixed mapping puts on one bound.
    paper = ScoreConfig(visual_normalizer=NormalizerConfig(kind="paper"))
    counts = counters(weighted([0.2, 0.25, 0.3, 0.35, 0.4, 0.5], paper, "visual"), paper)
    (alert,) = collapse_alerts(counts)
    assert alert.startswith("score: visual weights collapsed (67% on the lower bound, std 0.038 over 6 pairs")
    assert "raw scores 0.200-0.500" in alert and "score.visual_normalizer" in alert and not collapse_notes(counts)
    # Judges that gave every text pair one score: a fault of the judges, not a design.
    counts = counters(weighted([0.3] * 6, ScoreConfig()), ScoreConfig())
    (alert,) = collapse_alerts(counts)
    assert alert.startswith("score: text weights collapsed (std 0.000") and not collapse_notes(counts)


def test_the_visual_mapping_is_its_own_setting():
    config = ScoreConfig(visual_normalizer=NormalizerConfig(kind="paper"))
    assert set(weighted([1.0] * 3, config, "visual").column("weight").to_pylist()) == {1.25}
    # Text pairs keep the batch-calibrated default: z = -1.22, 0, 1.22 over span 2.
    assert weighted([0.2, 0.4, 0.6], config).column("weight").to_pylist() == [0.846907, 1.0, 1.153093]


def test_the_terminal_summary_prints_it_as_a_note(capsys):
    from types import SimpleNamespace

    from flows.cli import print_alerts

    config = ScoreConfig()
    print_alerts({"score": SimpleNamespace(counts=counters(weighted([1.0] * 6, config, "visual"), config))})
    out = capsys.readouterr().out
    assert out.startswith("NOTE score: every visual pair has the same confidence") and "ALERT" not in out
