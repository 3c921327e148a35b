import asyncio
import json

import pytest

from models.llm import EndpointConfigError, LLMClient, LLMError, parse_json_reply, run_with_client, system, user
from tasks.config import EndpointConfig
from tests.support.openai_server import OpenAIServer, Reply


def endpoint(server: OpenAIServer, **overrides) -> EndpointConfig:
    fields = {"base_url": server.base_url, "model": "test-model", "backoff_s": 0.0, "timeout_s": 5.0, "max_retries": 3}
    return EndpointConfig(**(fields | overrides))


def ask(config: EndpointConfig, prompts, cache_dir=None, **chat_kwargs):
    """Send all prompts concurrently; return replies or LLMErrors in order, plus the client counts."""

    async def work(client: LLMClient):
        results = await asyncio.gather(
            *(client.chat([system("sys"), user(p)], **chat_kwargs) for p in prompts), return_exceptions=True
        )
        return results, dict(client.counts)

    return run_with_client(config, cache_dir, work)


def test_retries_429_500_and_malformed_body_then_succeeds(openai_server):
    openai_server.script(
        Reply(status=429, retry_after=0), Reply(status=503), Reply(body=b'{"choices": [oops'), "final answer"
    )
    (reply,), counts = ask(endpoint(openai_server), ["q"])
    assert reply.text == "final answer"
    assert reply.attempts == 4 and not reply.cached
    assert len(openai_server.requests) == 4
    assert counts == {"requests": 4, "cache_hits": 0, "retries": 3, "errors": 0}


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (Reply(status=500), "http_500"),
        (Reply(status=429), "rate_limited"),
        (Reply(body=b"<html>bad gateway"), "malformed_response"),
    ],
)
def test_gives_up_after_max_retries_with_a_countable_reason(openai_server, failure, reason):
    openai_server.set_responder(lambda request: failure)
    (error,), counts = ask(endpoint(openai_server, max_retries=2), ["q"])
    assert isinstance(error, LLMError) and error.reason == reason
    assert len(openai_server.requests) == 3
    assert counts["errors"] == 1


def test_client_errors_are_not_retried(openai_server):
    openai_server.script(Reply(status=400))
    (error,), _ = ask(endpoint(openai_server), ["q"])
    assert error.reason == "http_400"
    assert len(openai_server.requests) == 1


def test_timeouts_are_retried_then_reported(openai_server):
    openai_server.set_responder(lambda request: Reply("late", delay_s=2.0))
    (error,), _ = ask(endpoint(openai_server, timeout_s=0.2, max_retries=1), ["q"])
    assert error.reason == "timeout"
    assert len(openai_server.requests) == 2


def test_rerun_is_served_from_cache_without_a_request(openai_server, tmp_path):
    config = endpoint(openai_server)
    first, _ = ask(config, ["a", "b"], cache_dir=tmp_path)
    assert len(openai_server.requests) == 2
    second, counts = ask(config, ["a", "b"], cache_dir=tmp_path)
    assert len(openai_server.requests) == 2
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.cached and r.attempts == 0 for r in second)
    assert counts["cache_hits"] == 2 and counts["requests"] == 0
    # A different request (here: another seed) is a different key.
    ask(config, ["a"], cache_dir=tmp_path, seed=7)
    assert len(openai_server.requests) == 3
    assert openai_server.requests[-1].body["seed"] == 7


def test_failures_are_not_cached(openai_server, tmp_path):
    openai_server.script(Reply(status=400))
    (error,), _ = ask(endpoint(openai_server), ["q"], cache_dir=tmp_path)
    assert isinstance(error, LLMError)
    (reply,), _ = ask(endpoint(openai_server), ["q"], cache_dir=tmp_path)
    assert not reply.cached and len(openai_server.requests) == 2


def test_concurrency_bound_is_respected(openai_server):
    openai_server.latency_s = 0.15
    replies, _ = ask(endpoint(openai_server, max_concurrency=3), [f"q{i}" for i in range(12)])
    assert all(not isinstance(r, Exception) for r in replies)
    assert openai_server.max_concurrent <= 3
    # The counter does see parallelism when the client allows it.
    openai_server.reset()
    ask(endpoint(openai_server, max_concurrency=12), [f"r{i}" for i in range(12)])
    assert openai_server.max_concurrent > 3


def test_requests_per_minute_spaces_request_starts(openai_server, releases):
    ask(endpoint(openai_server, rpm=1200, max_concurrency=8), [f"q{i}" for i in range(6)])
    assert len(openai_server.requests) == len(releases) == 6
    # 1200 rpm = one start per 50 ms, each after the one before.
    assert releases.on_schedule(0.05)


def test_a_429_pauses_every_request_of_the_client_not_only_its_own(openai_server):
    openai_server.script(Reply(status=429, retry_after=0.4))
    replies, counts = ask(endpoint(openai_server, max_concurrency=1), ["a", "b", "c"])
    assert not any(isinstance(r, LLMError) for r in replies) and counts["retries"] == 1
    limited, *later = sorted(openai_server.requests, key=lambda r: r.started)
    # Whoever comes next starts only once the server's Retry-After has passed.
    assert min(r.started for r in later) >= limited.finished + 0.4 * 0.9


def test_images_go_only_to_endpoints_allowed_to_receive_them(openai_server, tmp_path):
    png = b"\x89PNG\r\n\x1a\n fake"

    async def with_image(client: LLMClient):
        try:
            return await client.chat([user("what is this?", images=[png])])
        except LLMError as exc:
            return exc

    remote = EndpointConfig(base_url="http://10.255.255.1:9/v1", max_retries=0)
    assert run_with_client(remote, None, with_image).reason == "images_not_allowed"
    refused = run_with_client(endpoint(openai_server, allow_images=False), None, with_image)
    assert refused.reason == "images_not_allowed"
    assert openai_server.requests == []
    run_with_client(endpoint(openai_server), None, with_image)
    (request,) = openai_server.requests
    parts = request.messages[0]["content"]
    assert parts[1]["type"] == "image_url" and parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert EndpointConfig(base_url="http://10.0.0.1/v1", allow_images=True).images_allowed


def test_api_key_comes_from_the_named_env_var_and_is_never_shown(openai_server, monkeypatch):
    secret = "sk-test-5f3a9c-never-print-me"
    monkeypatch.setenv("MMEDPO_TEST_KEY", secret)
    config = endpoint(openai_server, api_key_env="MMEDPO_TEST_KEY", max_retries=0)
    openai_server.script("ok", Reply(status=401))
    results, _ = ask(config, ["a", "b"])
    assert {r.headers["authorization"] for r in openai_server.requests} == {f"Bearer {secret}"}
    # The two requests race: which one meets the scripted 401 is not fixed.
    (error,) = [r for r in results if isinstance(r, LLMError)]
    assert error.reason == "http_401"
    client = LLMClient(config)
    for shown in (repr(client), str(error), config.model_dump_json(), repr(config)):
        assert secret not in shown
    monkeypatch.delenv("MMEDPO_TEST_KEY")
    with pytest.raises(EndpointConfigError, match="MMEDPO_TEST_KEY"):
        LLMClient(config)


def test_a_retry_after_beyond_the_backoff_cap_ends_the_retries_at_once(openai_server):
    openai_server.set_responder(lambda request: Reply(status=429, retry_after=300))
    (error,), counts = ask(endpoint(openai_server, max_retries=4, max_backoff_s=5.0), ["q"])
    assert isinstance(error, LLMError) and error.reason == "rate_limited"
    assert "retry after 300 s" in error.detail and "max_backoff_s=5" in error.detail
    assert len(openai_server.requests) == 1 and counts["retries"] == 0


def test_a_retry_after_within_the_cap_is_waited_for(openai_server):
    openai_server.script(Reply(status=429, retry_after=0.05), Reply(status=429, retry_after=0.05), "ok")
    (reply,), counts = ask(endpoint(openai_server, max_retries=4, max_backoff_s=5.0), ["q"])
    assert reply.text == "ok" and counts["retries"] == 2


def test_an_error_body_echoing_the_key_is_redacted(openai_server, monkeypatch):
    secret = "sk-test-echoed-3141"
    monkeypatch.setenv("MMEDPO_TEST_KEY", secret)
    body = json.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}}).encode()
    openai_server.script(Reply(status=401, body=body))
    (error,), _ = ask(endpoint(openai_server, api_key_env="MMEDPO_TEST_KEY"), ["q"])
    assert error.reason == "http_401" and "Incorrect API key provided: ***" in str(error)
    assert secret not in str(error) and secret not in repr(error) and secret not in error.detail


def test_runs_inside_an_already_running_event_loop(openai_server):
    async def caller():
        return ask(endpoint(openai_server), ["q"])

    (reply,), _ = asyncio.run(caller())
    assert reply.text.startswith("echo:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": "no"}', {"answer": "no"}),
        (
            'Sure! ```json\n{"answer": "left", "type": "laterality"}\n``` hope it helps',
            {"answer": "left", "type": "laterality"},
        ),
        ('Here: {"a": {"b": [1, 2]}} and {"c": 3}', {"a": {"b": [1, 2]}}),
        ('[1, 2] then {broken then {"ok": true}', {"ok": True}),
        ("no json at all", None),
        ('{"unterminated": "x"', None),
    ],
)
def test_parse_json_reply_is_defensive(text, expected):
    assert parse_json_reply(text) == expected


# --- fields an endpoint refuses, log-probabilities ------------------------------------------


def refusing(field, message=None, status=422):
    """A server that refuses any request carrying ``field`` (saying so, or not) and echoes the rest."""

    def responder(request):
        if field in request.body:
            text = message if message is not None else f"Unrecognized request argument supplied: {field}"
            return Reply(status=status, body=json.dumps({"error": {"message": text}}).encode())
        return f"ok {request.prompt_text[-1:]}"

    return responder


def ask_in_turn(config, prompts, cache_dir=None, **chat_kwargs):
    """One client, prompts one after another: the later ones see what the earlier ones learned."""

    async def work(client):
        replies = [await client.chat([user(p)], **chat_kwargs) for p in prompts]
        return replies, dict(client.counts), set(client.refused)

    return run_with_client(config, cache_dir, work)


@pytest.mark.parametrize("message", [None, "bad request"], ids=["named", "not named"])
def test_a_refused_field_is_dropped_and_never_sent_again(openai_server, message):
    openai_server.set_responder(refusing("seed", message, status=400 if message else 422))
    replies, counts, refused = ask_in_turn(endpoint(openai_server), ["a", "b", "c"], seed=7, json_mode=True)
    assert [r.text for r in replies] == ["ok a", "ok b", "ok c"]
    assert refused == {"seed"} and counts["refused"] == 1
    bodies = [r.body for r in openai_server.requests]
    # The first request is refused; when the message names no field, dropping response_format is
    # tried first (refused again), then seed (passes). After that: never again.
    assert ["seed" in b for b in bodies] == (
        [True, False, False, False] if message is None else [True, True] + [False] * 3
    )
    assert all(b["response_format"] == {"type": "json_object"} for b in bodies if "seed" not in b)
    assert replies[0].attempts == len(bodies) - 2


def test_a_refusal_of_a_required_field_is_an_error_not_a_loop(openai_server):
    openai_server.set_responder(lambda request: Reply(status=400, body=b'{"error": {"message": "messages: empty"}}'))
    (error,), counts = ask(endpoint(openai_server), ["q"], seed=3)
    assert isinstance(error, LLMError) and error.reason == "http_400"
    assert len(openai_server.requests) == 2  # as asked, then without the one optional field: both refused


def test_logprobs_are_returned_cached_and_dropped_where_ignored(openai_server, tmp_path):
    tops = [[("yes", -0.2), (" no", -1.9)], [("<eos>", 0.0)]]
    openai_server.set_responder(lambda request: Reply("yes", top_logprobs=tops))
    (reply,), _, refused = ask_in_turn(endpoint(openai_server), ["q"], cache_dir=tmp_path, logprobs=5)
    assert reply.top_logprobs == ((("yes", -0.2), (" no", -1.9)), (("<eos>", 0.0),)) and refused == set()
    assert openai_server.requests[-1].body["top_logprobs"] == 5
    (again,), counts, _ = ask_in_turn(endpoint(openai_server), ["q"], cache_dir=tmp_path, logprobs=5)
    assert again.cached and again.top_logprobs == reply.top_logprobs and counts["requests"] == 0

    openai_server.set_responder(lambda request: "yes")  # accepts logprobs and ignores it (transformers serve)
    replies, counts, refused = ask_in_turn(endpoint(openai_server), ["x", "y"], logprobs=5)
    assert [r.top_logprobs for r in replies] == [None, None] and refused == {"logprobs"}
    assert ["logprobs" in r.body for r in openai_server.requests[-2:]] == [True, False]


def test_a_refusal_echoing_the_key_is_logged_redacted(openai_server, monkeypatch, caplog):
    secret = "sk-test-echoed-2718"
    monkeypatch.setenv("MMEDPO_TEST_KEY", secret)
    body = json.dumps({"error": {"message": f"seed is not supported for key {secret}"}}).encode()
    openai_server.script(Reply(status=400, body=body))
    with caplog.at_level("WARNING", logger="models.llm"):
        (reply,), counts = ask(endpoint(openai_server, api_key_env="MMEDPO_TEST_KEY"), ["q"], seed=1)
    assert reply.text.startswith("echo:") and counts["refused"] == 1
    assert "seed refused" in caplog.text and "***" in caplog.text and secret not in caplog.text
