"""The few-shot plain-text hallucination protocol (endpoints without structured output) and the
fallback chain ``backend: [llm, rules]``, against the scripted server; the real model:
tests/models/test_smollm2_served.py."""

from __future__ import annotations

import pytest

from tasks import catalog
from tasks.config import EndpointConfig, HallucinateConfig
from tasks.demo_data import QUESTIONS
from tasks.hallucinate import hallucinate
from tasks.hallucinate.fewshot import clean, error_type_of, examples_for, messages
from tasks.store import ArtifactStore
from tests.support.openai_server import Reply
from tests.support.samples import ingest_manifest
from tests.tasks.test_hallucinate import REPORT, sample

CASES = [
    sample("closed", "Yes", answer_type="closed", question="Is there a pleural effusion?"),
    sample("side", "Left lung", question="Where is the nodule?"),
    sample("report", REPORT, task="report", answer_type="report", question="Describe the findings."),
    sample("stubborn", "MRI", question="What modality is used?"),
    sample("down", "No", answer_type="closed", question="Is there a fracture?"),
    sample("nothing-fits", "the patient", question="Who is shown?"),
]


def last_turn(request) -> str:
    return request.messages[-1]["content"]


def small_model(request):
    """Answers like a small model that can follow the pattern: a label, quotes, a second line."""
    turn = last_turn(request)
    if "Correct answer: Yes" in turn:
        return "No"
    if "Correct answer: Left lung" in turn:
        return 'Wrong answer: "Right lung"\nBecause the nodule is on the right.'
    if "Correct answer: Heart" in turn:
        return REPORT.replace("right", "left")
    if "Correct answer: MRI" in turn:
        return "MRI"  # the same answer on every attempt: the rules take over
    if "Correct answer: No" in turn:
        return Reply(status=500)
    return "the patient"


def config(server, **overrides) -> HallucinateConfig:
    endpoint = EndpointConfig(base_url=server.base_url, model="m", backoff_s=0.0, max_retries=0, max_concurrency=2)
    return HallucinateConfig(**({"backend": ["llm", "rules"], "llm": endpoint} | overrides))


def test_examples_are_turns_of_the_samples_answer_kind_and_never_demo_items():
    demo_items = {(q[3].lower(), q[4].lower()) for q in QUESTIONS}
    for kind in ("closed", "open", "report"):
        found = examples_for(kind, "hallucinate_examples_v1")
        assert len(found) >= 3 and not {(q.lower(), a.lower()) for q, a, _ in found} & demo_items
    turns = messages(CASES[0], HallucinateConfig())
    assert turns[0]["role"] == "system" and "wrong answer only" in turns[0]["content"]
    assert [t["role"] for t in turns[1:]] == ["user", "assistant"] * 4 + ["user"]
    assert {t["content"] for t in turns[2::2][:4]} == {"yes", "no"}  # closed: yes/no examples only
    assert turns[-1]["content"] == "Question: Is there a pleural effusion?\nCorrect answer: Yes\nWrong answer:"
    assert [t["content"] for t in messages(CASES[2], HallucinateConfig())[2:-1:2]][0].startswith("The lungs are clear.")


@pytest.mark.parametrize(
    ("reply", "cleaned"),
    [("Right lung", "Right lung"), ('\n  Wrong answer: "CT"\nmore', "CT"), ("Answer: 'no'", "no"), ("\n\n", "")],
)
def test_clean_takes_the_answer_line(reply, cleaned):
    assert clean(reply) == cleaned


@pytest.mark.parametrize(
    ("answer", "rejected", "error_type"),
    [
        ("yes", "No", "yes_no_flip"),
        ("distal tibia", "proximal tibia", "other"),
        ("left lung", "right lung", "laterality"),
        ("No pleural effusion.", "Small pleural effusion.", "negation"),
        ("MRI", "CT", "modality_swap"),
        ("liver", "spleen", "organ_swap"),
        ("2", "3", "size_count"),
        ("multiple lung masses", "multiple lung nodules", "finding_substitution"),
    ],
)
def test_the_error_type_is_read_from_what_changed(answer, rejected, error_type):
    assert error_type_of("q", answer, rejected) == error_type


def test_llm_then_rules_per_sample_with_the_producer_recorded(openai_server, tmp_path, capsys):
    openai_server.set_responder(small_model)
    store = ArtifactStore(tmp_path / "store")
    manifest = hallucinate(store, config(openai_server, cache_dir=tmp_path / "cache"), ingest_manifest(store, CASES))
    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.HALLUCINATIONS)}

    assert (rows["closed"]["rejected"], rows["closed"]["backend"], rows["closed"]["error_type"]) == (
        "No",
        "llm",
        "yes_no_flip",
    )
    assert (rows["side"]["rejected"], rows["side"]["error_type"]) == ("Right lung", "laterality")
    assert rows["report"]["rejected"] == REPORT.replace("right", "left") and rows["report"]["fallbacks"] == []
    stubborn = rows["stubborn"]
    assert stubborn["backend"] == "rules" and stubborn["status"] == "ok" and stubborn["origin"] == "rules"
    assert stubborn["fallbacks"] == [{"backend": "llm", "status": "failed", "reason": "same_as_answer"}]
    assert stubborn["attempts"] == 3 + 1  # three answers of the LLM, one rule candidate
    assert rows["down"]["backend"] == "rules" and rows["down"]["rejected"] == "Yes"
    assert rows["down"]["fallbacks"][0]["reason"] == "llm_http_500"
    assert (rows["nothing-fits"]["status"], rows["nothing-fits"]["reason"]) == ("skipped", "no_rule_applies")

    # The protocol: greedy first, then sampled with a new seed; never JSON, never response_format.
    stubborn_requests = [r.body for r in openai_server.requests if "Correct answer: MRI" in last_turn(r)]
    assert [(b["temperature"], b.get("seed")) for b in stubborn_requests] == [(0.0, None), (0.7, 1), (0.7, 2)]
    assert all("response_format" not in r.body and "JSON" not in r.prompt_text for r in openai_server.requests)
    assert stubborn_requests[0]["max_tokens"] == 6 * 2 // 3 + 8

    counts = manifest.counts
    assert counts["backend[llm].ok"] == 3 and counts["backend[llm].failed.same_as_answer"] == 2
    assert counts["backend[rules].ok"] == 2 and counts["backend[rules].skipped.no_rule_applies"] == 1
    assert counts["rejections.share.llm"] == pytest.approx(3 / 5) and counts["rejections.share.rules"] == 0.4
    err = capsys.readouterr().err
    assert "hallucinate: 6 samples to compute (0 reused)" in err
    assert "hallucinate: done 6/6 in" in err and "1 failed (no_rule_applies 1)" in err


def test_a_single_backend_keeps_its_failures(openai_server, tmp_path):
    openai_server.set_responder(small_model)
    store = ArtifactStore(tmp_path / "store")
    llm_only = config(openai_server, backend="llm", cache_dir=tmp_path / "cache")
    rows = {
        r["sample_id"]: r
        for r in catalog.rows(hallucinate(store, llm_only, ingest_manifest(store, CASES)), catalog.HALLUCINATIONS)
    }
    assert (rows["stubborn"]["status"], rows["stubborn"]["reason"], rows["stubborn"]["fallbacks"]) == (
        "failed",
        "same_as_answer",
        [],
    )
    with pytest.raises(ValueError, match="distinct backends"):
        HallucinateConfig(backend=["llm", "llm"])
