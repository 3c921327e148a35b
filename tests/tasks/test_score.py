import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import catalog, score
from tasks.config import EndpointConfig, JudgeConfig, NormalizerConfig, ScoreConfig, StageConfig
from tasks.score import views, weighting
from tasks.store import ArtifactStore, stage_key
from tests.support.samples import sample_row

SIGMA = math.sqrt(0.1)


class FixtureConfig(StageConfig):
    """Stands in for the upstream stages' configs: the score stage only sees their keys."""

    label: str = "fixture"


def sample(sample_id, question, answer, answer_type="open"):
    return sample_row(
        sample_id,
        Path(f"/img/{sample_id}.png"),
        dataset="demo",
        question=question,
        answer=answer,
        answer_type=answer_type,
    )


SAMPLES = [
    sample("s1", "Is there a pleural effusion?", "yes", "closed"),
    sample("s2", "Findings?", "Mild cardiomegaly."),
    sample("s3", "Which side is the lesion on?", "Left."),
    sample("s4", "Findings?", "No fracture."),
]
HALLUCINATIONS = [
    {
        "sample_id": "s1",
        "rejected": "no",
        "backend": "rules",
        "error_type": "yes_no_flip",
        "candidates": None,
        "attempts": 1,
        "status": "ok",
        "reason": None,
    },
    {
        "sample_id": "s2",
        "rejected": "Severe cardiomegaly.",
        "backend": "rules",
        "error_type": "severity",
        "candidates": None,
        "attempts": 1,
        "status": "ok",
        "reason": None,
    },
    {
        "sample_id": "s3",
        "rejected": "Right.",
        "backend": "rules",
        "error_type": "laterality",
        "candidates": None,
        "attempts": 2,
        "status": "ok",
        "reason": None,
    },
    {
        "sample_id": "s4",
        "rejected": None,
        "backend": "rules",
        "error_type": None,
        "candidates": None,
        "attempts": 0,
        "status": "skipped",
        "reason": "no_rule_applies",
    },
    {
        "sample_id": "ghost",
        "rejected": "yes",
        "backend": "rules",
        "error_type": "yes_no_flip",
        "candidates": None,
        "attempts": 1,
        "status": "ok",
        "reason": None,
    },
]
REGIONS = [
    {
        "sample_id": "s1",
        "status": "ok",
        "reason": None,
        "source": "annotation",
        "mask_path": "/m1.png",
        "boxes": [],
        "confidence": 1.0,
        "area_fraction": 0.1,
    },
    {
        "sample_id": "s2",
        "status": "ok",
        "reason": None,
        "source": "sam",
        "mask_path": "/m2.png",
        "boxes": [],
        "confidence": 0.5,
        "area_fraction": 0.1,
    },
    {
        "sample_id": "s3",
        "status": "no_region",
        "reason": "no_prompt",
        "source": "sam",
        "mask_path": None,
        "boxes": [],
        "confidence": None,
        "area_fraction": None,
    },
    {
        "sample_id": "s4",
        "status": "ok",
        "reason": None,
        "source": "sam",
        "mask_path": "/m4.png",
        "boxes": [],
        "confidence": None,
        "area_fraction": 0.1,
    },
]


def write_partial(path, rows):
    """A Parquet file holding only the columns ``rows`` have (an upstream missing a column)."""
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def upstream(tmp_path):
    """A real store holding ingest, hallucinate and localize artifacts built from the fixtures above."""
    store = ArtifactStore(tmp_path / "store")
    builds = {"ingest": 0, "hallucinate": 0, "localize": 0}

    def build(stage, name, rows):
        def run(out):
            builds[stage] += 1
            declared = {"ingest": catalog.SAMPLES, "hallucinate": catalog.HALLUCINATIONS, "localize": catalog.REGIONS}[
                stage
            ]
            catalog.write(out, declared, rows)
            return {"rows": len(rows)}

        return run

    def make():
        ingest = store.run("ingest", "fixture", FixtureConfig(), {}, build("ingest", "samples.parquet", SAMPLES))
        hallucinate = store.run(
            "hallucinate",
            "fixture",
            FixtureConfig(),
            {"ingest": ingest},
            build("hallucinate", "hallucinations.parquet", HALLUCINATIONS),
        )
        localize = store.run(
            "localize", "fixture", FixtureConfig(), {"ingest": ingest}, build("localize", "regions.parquet", REGIONS)
        )
        return ingest, hallucinate, localize

    return store, make, builds


def rows_by(manifest):
    data = catalog.rows(manifest, catalog.SCORES)
    return {(r["pair_type"], r["sample_id"]): r for r in data}


# --- normalizers, hand-computed ----------------------------------------------------------------


def test_paper_normalizer_values():
    weights = weighting.normalize([1.0, 0.9, 0.5, 0.3], NormalizerConfig(kind="paper"))
    # clip(1.25 + 0.25 * (s - 1) / sqrt(0.1), 0.75, 1.25)
    assert weights.tolist() == pytest.approx([1.25, 1.25 - 0.25 * 0.1 / SIGMA, 1.25 - 0.25 * 0.5 / SIGMA, 0.75])
    assert weights.tolist() == pytest.approx([1.25, 1.170943, 0.854715, 0.75], abs=1e-6)


def test_paper_normalizer_mapping_is_configurable():
    config = NormalizerConfig(kind="paper", mu=0.5, sigma2=0.25, anchor=1.0, gain=0.1, lo=0.0, hi=2.0)
    assert weighting.normalize([0.5, 1.0, 0.0], config).tolist() == pytest.approx([1.0, 1.1, 0.9])


def test_zscore_normalizer_values_and_clipping():
    # mean 0.4, population std sqrt(0.08 / 3) = 0.163299; z = -1.224745, 0, 1.224745
    weights = weighting.normalize([0.2, 0.4, 0.6], NormalizerConfig(kind="zscore"))
    assert weights.tolist() == pytest.approx([1 - 0.25 * 1.224745 / 2, 1.0, 1 + 0.25 * 1.224745 / 2], abs=1e-6)
    # mean 0.25, std sqrt(0.1875) = 0.433013: z(1) = 1.732051 clipped to span 1, z(0) = -0.577350
    clipped = weighting.normalize([0.0, 0.0, 0.0, 1.0], NormalizerConfig(kind="zscore", span=1.0))
    assert clipped.tolist() == pytest.approx(
        [1 - 0.25 * 0.577350, 1 - 0.25 * 0.577350, 1 - 0.25 * 0.577350, 1.25], abs=1e-6
    )


@pytest.mark.parametrize("kind", ["paper", "zscore", "none"])
def test_all_equal_scores_do_not_divide_by_zero(kind):
    weights = weighting.normalize([0.7, 0.7, 0.7], NormalizerConfig(kind=kind))
    expected = {"paper": 1.25 - 0.25 * 0.3 / SIGMA, "zscore": 1.0, "none": 0.7}[kind]
    assert weights.tolist() == pytest.approx([expected] * 3)
    assert weighting.normalize([0.4], NormalizerConfig(kind=kind)).size == 1
    assert weighting.normalize([], NormalizerConfig(kind=kind)).size == 0


def test_none_normalizer_is_the_raw_score():
    assert weighting.normalize([0.0, 0.25], NormalizerConfig(kind="none")).tolist() == [0.0, 0.25]


def test_normalizer_rejects_inverted_range():
    with pytest.raises(ValueError, match="lo"):
        NormalizerConfig(lo=1.5, hi=1.0)


# --- the stage --------------------------------------------------------------------------------


def test_rules_panel_scores_text_and_visual_pairs_with_per_type_weights(upstream):
    store, make, _ = upstream
    manifest = score.score(store, ScoreConfig(normalizer=NormalizerConfig(kind="zscore")), *make())
    rows = rows_by(manifest)

    s1, s2, s3 = rows[("text", "s1")], rows[("text", "s2")], rows[("text", "s3")]
    # Rules: 0.5 * type + 0.5 * change; yes/no flip of a critical finding, severity word, laterality.
    assert [s1["raw_score"], s2["raw_score"], s3["raw_score"]] == pytest.approx([0.95, 0.425, 0.85])
    assert (
        s1["status"] == "ok"
        and s1["reason"] == "single_judge"
        and s1["n_rounds"] == 1
        and s1["judges_used"] == ["rules"]
    )
    assert s1["rounds"][0]["judge"] == "rules" and "effusion" in s1["rounds"][0]["reason"]
    # zscore over the three text scores only: mean 0.741667, std 0.231092.
    mean, std = (
        (0.95 + 0.425 + 0.85) / 3,
        math.sqrt(((0.95 - 0.741667) ** 2 + (0.425 - 0.741667) ** 2 + (0.85 - 0.741667) ** 2) / 3),
    )
    assert s2["weight"] == pytest.approx(1 + 0.125 * (0.425 - mean) / std, abs=1e-5)

    assert (rows[("text", "s4")]["status"], rows[("text", "s4")]["reason"]) == (
        "skipped",
        "hallucinate_skipped: no_rule_applies",
    )
    assert (rows[("text", "ghost")]["status"], rows[("text", "ghost")]["reason"]) == ("failed", "sample_missing")
    assert rows[("text", "s4")]["weight"] is None

    v1, v2 = rows[("visual", "s1")], rows[("visual", "s2")]
    assert (v1["raw_score"], v2["raw_score"]) == (1.0, 0.5)
    # Visual weights normalized among visual pairs alone: z = +1, -1 -> 1.125, 0.875.
    assert (v1["weight"], v2["weight"]) == pytest.approx((1.125, 0.875))
    assert v1["judges_used"] == ["localizer:annotation"] and v1["mode"] == "localizer"
    assert (rows[("visual", "s3")]["status"], rows[("visual", "s3")]["reason"]) == (
        "skipped",
        "localize_no_region: no_prompt",
    )
    assert (rows[("visual", "s4")]["status"], rows[("visual", "s4")]["reason"]) == ("failed", "no_confidence")

    counts = manifest.counts
    assert (counts["text.ok"], counts["text.skipped"], counts["text.failed"]) == (3, 1, 1)
    assert counts["text.failed.sample_missing"] == 1 and counts["text.ok.single_judge"] == 3
    assert (counts["visual.ok"], counts["visual.skipped"], counts["visual.failed"]) == (2, 1, 1)
    assert counts["visual.raw_score.mean"] == pytest.approx(0.75) and counts["visual.weight.min"] == pytest.approx(
        0.875
    )


def test_endpoint_debate_rounds_are_recorded_in_the_parquet(upstream, openai_server):
    def respond(request):
        if request.body["model"] == "med42":
            return json.dumps({"score": 0.6, "reason": "plausible"})
        if "Severe cardiomegaly" in request.prompt_text:
            return "not sure"
        return json.dumps({"decision": "adopt", "score": 0.6, "reason": "agree"})

    openai_server.set_responder(respond)
    store, make, _ = upstream
    endpoint = dict(
        base_url=openai_server.base_url,
        backoff_s=0.0,
        timeout_s=5.0,
        max_retries=0,
        capabilities={"structured_output": True},  # the JSON protocol
    )
    config = ScoreConfig(
        judges=[
            JudgeConfig(name="med42", kind="endpoint", endpoint=EndpointConfig(model="med42", **endpoint)),
            JudgeConfig(
                name="biomistral",
                kind="endpoint",
                endpoint=EndpointConfig(model="biomistral", **endpoint),
                parse_retries=0,
            ),
        ],
        normalizer=NormalizerConfig(kind="none"),
    )
    manifest = score.score(store, config, *make())
    rows = rows_by(manifest)
    s1 = rows[("text", "s1")]
    assert (s1["raw_score"], s1["reason"], s1["n_rounds"], s1["judges_used"]) == (
        0.6,
        "adopted",
        2,
        ["med42", "biomistral"],
    )
    assert [(r["round"], r["judge"], r["score"], r["adopted"], r["error"]) for r in s1["rounds"]] == [
        (1, "med42", 0.6, False, None),
        (2, "biomistral", 0.6, True, None),
    ]
    s2 = rows[("text", "s2")]
    assert [(r["judge"], r["error"]) for r in s2["rounds"]] == [("med42", None), ("biomistral", "junk_reply")]
    assert (s2["raw_score"], s2["reason"]) == (0.6, "single_judge")
    assert manifest.counts["judge[biomistral].excluded.junk_reply"] == 1
    # Each judge's client counters reach the manifest, one request per call the server saw.
    for judge in ("med42", "biomistral"):
        served = sum(request.body["model"] == judge for request in openai_server.requests)
        assert served > 0 and manifest.counts[f"judge[{judge}].llm.requests"] == served
    # The response cache lives in the store, outside any artifact.
    assert (store.root / score.LLM_CACHE).is_dir()


def test_changing_the_panel_recomputes_score_only(upstream, openai_server):
    openai_server.set_responder(lambda request: json.dumps({"score": 0.5, "reason": "r"}))
    store, make, builds = upstream
    ingest, hallucinate, localize = make()
    first = score.score(store, ScoreConfig(), ingest, hallucinate, localize)
    again = score.score(store, ScoreConfig(), *make())
    assert again.key == first.key and again.created == first.created  # served from the store

    panel = ScoreConfig(
        judges=[
            JudgeConfig(),
            JudgeConfig(
                name="gpt",
                kind="endpoint",
                endpoint=EndpointConfig(
                    base_url=openai_server.base_url, model="gpt-4o", capabilities={"structured_output": True}
                ),
            ),
        ]
    )
    ingest2, hallucinate2, localize2 = make()
    second = score.score(store, panel, ingest2, hallucinate2, localize2)

    assert (ingest2.key, hallucinate2.key, localize2.key) == (ingest.key, hallucinate.key, localize.key)
    assert builds == {"ingest": 1, "hallucinate": 1, "localize": 1}
    assert [m.key for m in store.list("hallucinate")] == [hallucinate.key]
    assert [m.key for m in store.list("localize")] == [localize.key]
    assert second.key != first.key
    assert sorted(m.key for m in store.list("score")) == sorted([first.key, second.key])
    assert rows_by(second)[("text", "s1")]["judges_used"] == ["rules", "gpt"]
    # Downstream stages key on the score manifest, so they recompute too.
    assert stage_key("assemble", "c", FixtureConfig(), {"score": first}) != stage_key(
        "assemble", "c", FixtureConfig(), {"score": second}
    )


def test_missing_upstream_column_is_a_clear_error(tmp_path):
    path = tmp_path / "regions.parquet"
    write_partial(path, [{"sample_id": "a", "status": "ok"}])
    with pytest.raises(ValueError, match="confidence"):
        catalog.read_file(path, catalog.REGIONS, score.REGION_COLUMNS)


def test_run_config_has_offline_score_defaults():
    from tasks.config import RunConfig

    config = RunConfig().score
    assert [j.kind for j in config.judges] == ["rules"] and config.mode == "debate" and config.max_rounds == 5
    assert config.normalizer.kind == "zscore" and (config.normalizer.lo, config.normalizer.hi) == (0.75, 1.25)
    assert config.visual_normalizer is None  # visual pairs: the same mapping
    with pytest.raises(ValueError, match="unique"):
        ScoreConfig(judges=[JudgeConfig(), JudgeConfig()])


# --- UI builders ------------------------------------------------------------------------------


def ui_table():
    def rounds(*turns):
        return [
            {"round": i + 1, "judge": j, "score": s, "reason": f"{j} says {s}", "adopted": a, "error": e}
            for i, (j, s, a, e) in enumerate(turns)
        ]

    rows = [
        score.empty_row("a", "text")
        | {
            "raw_score": 0.9,
            "weight": 1.2,
            "status": "ok",
            "reason": "adopted",
            "n_rounds": 2,
            "judges_used": ["x", "y"],
            "rounds": rounds(("x", 0.9, False, None), ("y", 0.9, True, None)),
        },
        score.empty_row("b", "text")
        | {
            "raw_score": 0.3,
            "weight": 0.8,
            "status": "ok",
            "reason": "no_agreement_mean",
            "n_rounds": 3,
            "judges_used": ["x", "y"],
            "rounds": rounds(("x", 0.2, False, None), ("y", 0.4, False, None), ("x", 0.3, False, None)),
        },
        score.empty_row("c", "text")
        | {
            "raw_score": 0.6,
            "weight": 1.0,
            "status": "ok",
            "reason": "no_agreement_mean",
            "n_rounds": 3,
            "judges_used": ["x", "y"],
            "rounds": rounds(("x", 0.5, False, None), ("y", 0.7, False, None), ("x", 0.6, False, None)),
        },
        score.empty_row("d", "text")
        | {
            "raw_score": 0.4,
            "weight": 0.9,
            "status": "ok",
            "reason": "single_judge",
            "n_rounds": 1,
            "judges_used": ["x"],
            "rounds": rounds(("y", None, False, "junk_reply"), ("x", 0.4, False, None)),
        },
        score.empty_row("v", "visual")
        | {"raw_score": 0.7, "weight": 1.1, "status": "ok", "reason": "localizer_confidence"},
        score.empty_row("w", "visual") | {"status": "skipped", "reason": "localize_failed"},
    ]
    return catalog.table(rows, catalog.SCORES)


def test_histogram_is_a_png():
    png = views.histogram_png(ui_table())
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_judge_agreement_table():
    table = {row["judge"]: row for row in views.judge_agreement(ui_table())}
    # x's first scores: a 0.9, b 0.2, c 0.5, d 0.4; y's: b 0.4, c 0.7 (a was an adoption).
    assert table["x"]["samples_scored"] == 4 and table["x"]["mean_score"] == pytest.approx(0.5)
    assert (table["y"]["samples_scored"], table["y"]["adoptions"], table["y"]["exclusions"]) == (2, 1, 1)
    # Over b and c both judges moved by +0.3: perfectly correlated.
    assert table["x"]["r_y"] == pytest.approx(1.0) and table["y"]["r_x"] == pytest.approx(1.0)


def test_rounds_used_and_extremes():
    assert views.rounds_used(ui_table()) == [
        {"rounds": 1, "ended": "single_judge", "pairs": 1},
        {"rounds": 2, "ended": "adopted", "pairs": 1},
        {"rounds": 3, "ended": "no_agreement_mean", "pairs": 2},
    ]
    highest, lowest = views.extremes(ui_table(), n=2)
    assert [(r["sample_id"], r["pair_type"]) for r in highest] == [("a", "text"), ("v", "visual")]
    assert [r["sample_id"] for r in lowest] == ["b", "d"]
    assert highest[0]["why"] == "y says 0.9" and highest[1]["why"] == "localizer_confidence"


def test_stats_rows_from_counters(upstream):
    store, make, _ = upstream
    manifest = score.score(store, ScoreConfig(), *make())
    stats = {(r["pair_type"], r["value"]): r for r in views.stats_rows(manifest.counts)}
    assert stats[("visual", "raw_score")]["max"] == 1.0 and stats[("visual", "raw_score")]["min"] == 0.5
    assert set(stats) == {("text", "raw_score"), ("text", "weight"), ("visual", "raw_score"), ("visual", "weight")}


def test_visual_confidence_out_of_range_fails_and_float32_is_rounded():
    region = {"sample_id": "a", "status": "ok", "reason": None, "source": "heatmap"}
    assert (
        score.visual_row(region | {"confidence": float(pa.array([0.7], pa.float32())[0].as_py())})["raw_score"] == 0.7
    )
    bad = score.visual_row(region | {"confidence": 1.5})
    assert (bad["status"], bad["reason"], bad["raw_score"]) == ("failed", "confidence_out_of_range: 1.5", None)


def test_yes_no_judges_keep_the_distribution_each_score_came_from(upstream, openai_server, tmp_path, capsys):
    from tests.support.tiny_lm import build_tiny_lm

    openai_server.set_responder(lambda request: "no" if "Right." in request.prompt_text else "yes")
    store, make, _ = upstream
    served_like = EndpointConfig(base_url=openai_server.base_url, model="small", backoff_s=0.0, max_retries=0)
    config = ScoreConfig(
        judges=[
            JudgeConfig(name="logits", kind="transformers", model_path=build_tiny_lm(tmp_path / "lm")),
            JudgeConfig(name="replies", kind="endpoint", endpoint=served_like),
        ],
        agreement_tolerance=0.5,
    )
    rows = rows_by(score.score(store, config, *make()))
    for sample_id in ("s1", "s2", "s3"):
        first, second = rows[("text", sample_id)]["rounds"][:2]
        assert (first["source"], second["source"]) == ("logits", "parsed") and first["mass"] > 0
        (p_yes, p_no) = (d["p"] for d in first["distribution"])
        assert [d["value"] for d in first["distribution"]] == [1.0, 0.0] and p_yes + p_no == pytest.approx(1.0)
        assert first["score"] == pytest.approx(p_yes, abs=1e-5)
        assert second["distribution"] == [{"value": 0.0 if sample_id == "s3" else 1.0, "p": 1.0}]
        assert second["mass"] is None
    assert rows[("visual", "s1")]["rounds"] == []
    # Progress in the terminal, sample by sample: the pairs judged and the ones with nothing to judge.
    err = capsys.readouterr().err
    assert "score: 5 samples to compute (0 reused)" in err
    assert "score: done 5/5 in" in err and ", 2 failed (" in err
    assert "hallucinate_skipped 1" in err and "sample_missing 1" in err
