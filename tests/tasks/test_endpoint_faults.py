"""Endpoint faults end to end through the stage functions (ingest artifact -> hallucinate (llm)
-> localize -> score (endpoint judges)): connection refused, replies past the timeout,
minutes-long rate limits, transient 503s and judge scores outside [0, 1]. Every stage
completes; each affected sample is a row with a clear status and reason; retries are bounded."""

from __future__ import annotations

from tasks import catalog
from tasks.config import EndpointConfig, HallucinateConfig, JudgeConfig, LocalizeConfig, NormalizerConfig, ScoreConfig
from tasks.hallucinate import hallucinate
from tasks.localize import localize
from tasks.score import score
from tasks.store import ArtifactStore
from tests.support.faults import CASES, FaultyResponder, count, question, refused_base_url
from tests.support.samples import ingest_manifest, sample_row, write_random_image

RETRIES = 1


def endpoint(base_url: str, model: str = "m") -> EndpointConfig:
    # max_backoff_s well under the server's Retry-After: 300; timeout well under its 3 s delay.
    return EndpointConfig(
        base_url=base_url,
        model=model,
        timeout_s=0.5,
        max_retries=RETRIES,
        backoff_s=0.0,
        max_backoff_s=5.0,
        capabilities={"structured_output": True},  # the JSON protocols (tests/support/faults.py answers JSON)
    )


def fault_samples(store: ArtifactStore, folder):
    rows = [
        sample_row(
            f"f:train:{case}",
            write_random_image(folder / f"{case}.png", seed=i),
            boxes=[[4, 4, 20, 20]],
            question=question(case),
            answer="yes",
            answer_type="closed",
        )
        for i, case in enumerate(CASES)
    ]
    return ingest_manifest(store, rows)


def by_sample(manifest, artifact, pair_type=None):
    rows = catalog.rows(manifest, artifact)
    return {r["sample_id"].rsplit(":", 1)[1]: r for r in rows if pair_type is None or r["pair_type"] == pair_type}


def test_hallucinate_and_score_complete_with_every_fault_marked(tmp_path, openai_server):
    responder = FaultyResponder()
    openai_server.set_responder(responder)
    store = ArtifactStore(tmp_path / "store")
    ingest = fault_samples(store, tmp_path / "img")

    made = hallucinate(
        store,
        HallucinateConfig(backend="llm", llm=endpoint(openai_server.base_url), cache_dir=tmp_path / "cache"),
        ingest,
    )
    rows = by_sample(made, catalog.HALLUCINATIONS)
    assert {case: (r["status"], r["reason"]) for case, r in rows.items()} == {
        "ok": ("ok", None),
        "limited": ("failed", "llm_rate_limited"),
        "slow": ("failed", "llm_timeout"),
        "flaky": ("ok", None),
        "outofrange": ("ok", None),
    }
    requests = openai_server.requests
    # Bounded: the rate limit is not waited out (one request), a timeout is retried max_retries times.
    assert count(requests, "limited", "inject") == 1
    assert count(requests, "slow", "inject") == RETRIES + 1
    assert count(requests, "flaky", "inject") == 2
    assert (
        made.counts["rejections.failed.llm_rate_limited"] == 1
        and made.counts["rejections.failed.llm_timeout"] == 1
        and made.counts["rejections.ok"] == 3
    )

    regions = localize(store, LocalizeConfig(), ingest)
    panel = ScoreConfig(
        judges=[
            JudgeConfig(
                name="med42", kind="endpoint", endpoint=endpoint(openai_server.base_url, "med42"), parse_retries=1
            ),
            JudgeConfig(name="offline", kind="endpoint", endpoint=endpoint(refused_base_url(), "biomistral")),
        ],
        normalizer=NormalizerConfig(kind="none"),
    )
    scored = score(store, panel, ingest, made, regions)
    text = by_sample(scored, catalog.SCORES, "text")
    assert {case: (r["status"], r["reason"].split(":")[0]) for case, r in text.items()} == {
        "ok": ("ok", "single_judge"),
        "limited": ("skipped", "hallucinate_failed"),
        "slow": ("skipped", "hallucinate_failed"),
        "flaky": ("ok", "single_judge"),
        "outofrange": ("failed", "no_judge_answered"),
    }
    assert text["limited"]["reason"] == "hallucinate_failed: llm_rate_limited"
    assert text["ok"]["raw_score"] == 0.8 and text["outofrange"]["raw_score"] is None
    errors = {case: [(t["judge"], t["error"]) for t in r["rounds"]] for case, r in text.items() if r["rounds"]}
    assert errors == {
        "ok": [("med42", None), ("offline", "unavailable_connection")],
        "flaky": [("med42", None), ("offline", "unavailable_connection")],
        "outofrange": [("med42", "junk_reply"), ("offline", "unavailable_connection")],
    }
    assert "outside [0, 1]" in text["outofrange"]["rounds"][0]["reason"]
    assert count(openai_server.requests, "outofrange", "judge") == 2  # the score, then one re-ask
    assert scored.counts["judge[offline].excluded.unavailable_connection"] == 3
    assert scored.counts["text.failed.no_judge_answered"] == 1 and scored.counts["visual.ok"] == len(CASES)


def test_an_endpoint_refusing_connections_fails_every_sample_after_bounded_retries(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    ingest = fault_samples(store, tmp_path / "img")
    config = HallucinateConfig(backend="llm", llm=endpoint(refused_base_url()), cache_dir=tmp_path / "cache")
    made = hallucinate(store, config, ingest)
    rows = by_sample(made, catalog.HALLUCINATIONS)
    assert {r["status"] for r in rows.values()} == {"failed"} and {r["reason"] for r in rows.values()} == {
        "llm_connection"
    }
    assert made.counts["llm.requests"] == len(CASES) * (RETRIES + 1) and made.counts["llm.errors"] == len(CASES)
