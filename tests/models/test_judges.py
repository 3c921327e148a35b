import asyncio
import json
import socket

import pytest

from models import judges
from models import panel as panels
from models.judges import JudgeItem, JunkReply, Turn, parse_verdict
from models.rules_judge import rules_score
from tasks.config import EndpointConfig, JudgeConfig
from tests.support.openai_server import OpenAIServer, Reply
from tests.support.tiny_lm import build_tiny_lm

ITEM = JudgeItem(
    "s1", "Is there a pneumothorax?", "There is a left pneumothorax.", "There is a right pneumothorax.", "laterality"
)


def reply(score=None, reason="because", decision=None) -> str:
    body = {"reason": reason}
    if score is not None:
        body["score"] = score
    if decision is not None:
        body["decision"] = decision
    return json.dumps(body)


def endpoint_judge(server: OpenAIServer, name: str, **overrides) -> JudgeConfig:
    endpoint = EndpointConfig(
        base_url=overrides.pop("base_url", server.base_url),
        model=name,
        backoff_s=0.0,
        timeout_s=5.0,
        max_retries=overrides.pop("max_retries", 1),
        capabilities={"structured_output": True},  # the JSON protocol; yes/no: test_token_judges.py
    )
    return JudgeConfig(name=name, kind="endpoint", endpoint=endpoint, **overrides)


def by_model(**answers):
    """Responder: each judge (= model name) answers with its function of the prompt text."""

    def respond(request):
        answer = answers[request.body["model"]]
        return answer(request) if callable(answer) else answer

    return respond


def run_debate(configs, item=ITEM, mode="debate", **kwargs):
    async def main():
        async with panels.open_panel(configs, "v1", None) as panel:
            if mode == "mean":
                return await panels.independent_mean(panel, item)
            return await panels.debate(panel, item, **kwargs)

    return asyncio.run(main())


# --- reply parsing ---------------------------------------------------------------------------


def test_parses_json_inside_fences_and_chatter():
    verdict = parse_verdict('Sure, here it is:\n```json\n{"score": 0.7, "reason": "wrong side"}\n```\nHope that helps.')
    assert (verdict.score, verdict.reason, verdict.adopted) == (0.7, "wrong side", False)


@pytest.mark.parametrize(("raw", "expected"), [('"0.4"', 0.4), ('"80%"', 0.8), ("1", 1.0), ("0", 0.0)])
def test_score_forms(raw, expected):
    assert parse_verdict(f'{{"Score": {raw}, "rationale": "r"}}').score == pytest.approx(expected)


def test_plain_text_score_fallback():
    assert parse_verdict("Score: 0.35 - the change is minor").score == pytest.approx(0.35)


@pytest.mark.parametrize(
    "text",
    [
        "I cannot rate this.",
        '{"score": 7, "reason": "x"}',
        '{"score": "high"}',
        '{"reason": "no number"}',
        '{"score": true}',
        '{"score": NaN}',
        "",
    ],
)
def test_junk_is_rejected(text):
    with pytest.raises(JunkReply):
        parse_verdict(text)


def test_adopt_takes_previous_score_whatever_number_is_repeated():
    previous = Turn(1, "a", 0.8, "r", False)
    verdict = parse_verdict('{"decision": "adopt", "score": 0.3, "reason": "agree"}', previous)
    assert (verdict.score, verdict.adopted) == (0.8, True)
    # Without a previous score there is nothing to adopt: the judge's own number counts.
    assert parse_verdict('{"decision": "adopt", "score": 0.3}', None) == judges.Verdict(0.3, "", False)


# --- rules judge -----------------------------------------------------------------------------


def test_rules_flipped_critical_finding_outweighs_changed_adjective():
    flip = rules_score(
        JudgeItem("a", "Describe the findings.", "There is no pneumothorax.", "There is pneumothorax.", "negation")
    )
    adjective = rules_score(
        JudgeItem("b", "Describe the findings.", "Mild cardiomegaly.", "Severe cardiomegaly.", "severity")
    )
    # 0.5 * type weight + 0.5 * change weight: negation 0.90 and a flipped critical finding 1.00;
    # severity 0.45 and a severity word 0.40.
    assert flip.score == pytest.approx(0.95)
    assert adjective.score == pytest.approx(0.425)
    assert "pneumothorax" in flip.reason


def test_rules_yes_no_answer_weighs_the_finding_asked_about():
    critical = rules_score(JudgeItem("a", "Is there a pleural effusion?", "yes", "no", "yes_no_flip"))
    benign = rules_score(JudgeItem("b", "Is this image taken in the morning?", "yes", "no", "yes_no_flip"))
    assert critical.score == pytest.approx(0.5 * 0.90 + 0.5 * 1.00)
    assert benign.score == pytest.approx(0.5 * 0.90 + 0.5 * 0.50)


def test_rules_laterality_and_unknown_type_and_no_change():
    assert rules_score(ITEM).score == pytest.approx(0.85)
    untyped = rules_score(JudgeItem("c", "Which organ?", "liver", "spleen", None))
    assert untyped.score == pytest.approx(0.5 * 0.60 + 0.5 * 0.70)
    plane = rules_score(JudgeItem("e", "In which plane?", "Axial", "Coronal", "plane_swap"))
    assert plane.score == pytest.approx(0.35)
    # The hallucinate stage's negation rule: 'No pleural effusion.' -> 'Small pleural effusion.'
    negated = rules_score(JudgeItem("f", "Findings?", "No pleural effusion.", "Small pleural effusion.", "negation"))
    assert negated.score == pytest.approx(0.95)
    same = rules_score(JudgeItem("d", "q", "Left lung.", "left  LUNG", "laterality"))
    assert same.score == 0.0


def test_rules_judge_in_a_debate_agrees_with_itself_across_two_members():
    configs = [JudgeConfig(name="r1"), JudgeConfig(name="r2")]
    outcome = run_debate(configs)
    assert (outcome.score, outcome.status, outcome.reason) == (pytest.approx(0.85), "ok", "adopted")
    assert [(t.judge, t.adopted) for t in outcome.turns] == [("r1", False), ("r2", True)]


# --- debate and mean against a real OpenAI-compatible server ---------------------------------


def test_debate_stops_when_round_two_adopts(openai_server):
    openai_server.set_responder(
        by_model(
            a=reply(0.8, "wrong side of a critical finding"), b=reply(0.8, "agree", decision="adopt"), c=reply(0.1)
        )
    )
    configs = [endpoint_judge(openai_server, n) for n in ("a", "b", "c")]
    outcome = run_debate(configs, max_rounds=5)
    assert (outcome.score, outcome.status, outcome.reason) == (0.8, "ok", "adopted")
    assert [(t.round, t.judge, t.score, t.adopted) for t in outcome.turns] == [
        (1, "a", 0.8, False),
        (2, "b", 0.8, True),
    ]
    assert outcome.judges_used == ["a", "b"]
    assert [r.body["model"] for r in openai_server.requests] == ["a", "b"]
    # Judge b saw judge a's score and reason; judge a saw no previous verdict.
    assert (
        "0.80" in openai_server.requests[1].prompt_text
        and "wrong side of a critical finding" in openai_server.requests[1].prompt_text
    )
    assert "Another reviewer" not in openai_server.requests[0].prompt_text


def test_debate_without_agreement_takes_mean_of_history_after_max_rounds(openai_server):
    openai_server.set_responder(by_model(a=reply(0.2), b=reply(0.6, decision="rescore")))
    configs = [endpoint_judge(openai_server, n) for n in ("a", "b")]
    outcome = run_debate(configs, max_rounds=5)
    assert [t.judge for t in outcome.turns] == ["a", "b", "a", "b", "a"]
    assert outcome.score == pytest.approx((0.2 + 0.6 + 0.2 + 0.6 + 0.2) / 5)
    assert (outcome.status, outcome.reason, outcome.scored_rounds) == ("ok", "no_agreement_mean", 5)
    assert len(openai_server.requests) == 5


def test_rescore_within_tolerance_counts_as_agreement(openai_server):
    openai_server.set_responder(by_model(a=reply(0.5), b=reply(0.55, decision="rescore")))
    configs = [endpoint_judge(openai_server, n) for n in ("a", "b")]
    assert run_debate(configs, tolerance=0.1).score == 0.5
    assert run_debate(configs, tolerance=0.0, max_rounds=2).score == pytest.approx(0.525)


def test_junk_replies_exclude_the_judge_for_that_sample(openai_server):
    openai_server.set_responder(by_model(a="I refuse to give numbers.", b=reply(0.7, "plausible")))
    configs = [endpoint_judge(openai_server, "a", parse_retries=1), endpoint_judge(openai_server, "b")]
    outcome = run_debate(configs)
    assert [(t.judge, t.score, t.error) for t in outcome.turns] == [("a", None, "junk_reply"), ("b", 0.7, None)]
    # b is the only judge left and never answers itself.
    assert (outcome.score, outcome.reason, outcome.judges_used) == (0.7, "single_judge", ["b"])
    asked_a = [r for r in openai_server.requests if r.body["model"] == "a"]
    assert len(asked_a) == 2  # one re-ask (parse_retries=1), then excluded
    # The re-ask shows the junk back with the repair instruction, so a cache cannot replay it.
    assert asked_a[1].messages[1] == {"role": "assistant", "content": "I refuse to give numbers."}
    assert "could not be read" in asked_a[1].messages[2]["content"]


def test_junk_then_valid_reply_on_the_reask_is_used(openai_server):
    openai_server.script("hmm", reply(0.3, "minor"))
    outcome = run_debate([endpoint_judge(openai_server, "a")])
    assert (outcome.score, outcome.reason, outcome.turns[0].reason) == (0.3, "single_judge", "minor")


def test_a_judge_down_is_excluded_and_the_debate_goes_on(openai_server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    openai_server.set_responder(by_model(a=reply(0.4), b=Reply(status=503), c=reply(0.4, decision="adopt")))
    configs = [
        endpoint_judge(openai_server, "a"),
        endpoint_judge(openai_server, "b"),
        endpoint_judge(openai_server, "down", base_url=dead_url, max_retries=0),
        endpoint_judge(openai_server, "c"),
    ]
    outcome = run_debate(configs)
    assert [(t.judge, t.error) for t in outcome.turns] == [
        ("a", None),
        ("b", "unavailable_http_503"),
        ("down", "unavailable_connection"),
        ("c", None),
    ]
    assert (outcome.score, outcome.reason, outcome.judges_used) == (0.4, "adopted", ["a", "c"])


def test_every_judge_down_fails_the_sample(openai_server):
    openai_server.set_responder(lambda request: Reply(status=500))
    outcome = run_debate(
        [endpoint_judge(openai_server, "a", max_retries=0), endpoint_judge(openai_server, "b", max_retries=0)]
    )
    assert (outcome.score, outcome.status, outcome.reason) == (None, "failed", "no_judge_answered")
    assert [t.error for t in outcome.turns] == ["unavailable_http_500", "unavailable_http_500"]


def test_mean_mode_averages_independent_scores_and_skips_junk(openai_server):
    openai_server.set_responder(by_model(a=reply(0.2), b=reply(0.6), c="no idea"))
    configs = [endpoint_judge(openai_server, n, parse_retries=0) for n in ("a", "b", "c")]
    outcome = run_debate(configs, mode="mean")
    assert (outcome.score, outcome.reason, outcome.judges_used) == (pytest.approx(0.4), "mean", ["a", "b"])
    assert all("Another reviewer" not in r.prompt_text for r in openai_server.requests)


def test_unknown_prompt_version_fails_before_judging(openai_server):
    with pytest.raises(FileNotFoundError, match="v9"):
        asyncio.run(_open([endpoint_judge(openai_server, "a")], "v9"))


async def _open(configs, version):
    async with panels.open_panel(configs, version, None):
        pass


# --- a local transformers causal LM ----------------------------------------------------------


def test_transformers_judge_with_random_weights_answers_junk_and_is_excluded(tmp_path):
    build_tiny_lm(tmp_path, chat_template=False)

    configs = [
        JudgeConfig(
            name="local", kind="transformers", model_path=tmp_path, protocol="json", max_tokens=6, parse_retries=1
        ),
        JudgeConfig(name="rules"),
    ]
    outcome = run_debate(configs)
    # The vocabulary has no digits, so the random model can never produce a score.
    assert [(t.judge, t.error) for t in outcome.turns] == [("local", "junk_reply"), ("rules", None)]
    assert outcome.score == pytest.approx(0.85)
