"""Async client for OpenAI-compatible chat endpoints (GPT-4o, vLLM, llama.cpp server).

What every caller of an LLM in this project needs, in one place:

- one HTTP client per worker process and endpoint (models/llm_hub.py) with bounded concurrency
  (``max_concurrency``) and a requests-per-minute limit for all shards of a run together (an
  ``LLMClient`` is a shard's handle on them, with its own cache and counters);
- retries with exponential backoff on 429, 5xx, timeouts, connection errors and malformed
  response bodies (a ``Retry-After`` header wins; one longer than ``max_backoff_s`` ends the
  retries at once: a provider rate-limiting for minutes would otherwise hold every sample for
  minutes), and a short, countable ``LLMError.reason`` when retries run out, so callers can
  turn a failure into a row instead of a crash;
- an on-disk response cache keyed by the full request (sqlite under ``cache_dir``), so a
  re-run never pays twice - callers that want a different answer change the request (e.g. a
  ``seed`` per attempt);
- images only go to endpoints allowed to receive them (by default local ones);
- a served endpoint (``serve: <model folder>``) is pointed at the run's server for that folder
  (models/serve.py), which it starts on first use; its cache key names the folder's content
  digest, never the port or the path;
- optional request fields (``seed``, ``response_format``, ``logprobs``) an endpoint refuses with
  HTTP 400/422 - or, for logprobs, ignores - are remembered by the client and never sent to it
  again: the request goes again without them (``refused``, counter ``refused``);
- the API key is read from the environment variable (or Prefect Secret block) named in
  the config and lives only inside the HTTP client: never in reprs, logs or errors (an error
  body that echoes it back is redacted before it becomes an ``LLMError``).

Usage: ``async with LLMClient(endpoint, cache_dir) as llm: reply = await llm.chat([system("..."),
user("...")])`` (``reply.text``, ``reply.cached``), or ``run_with_client(endpoint, cache_dir, async_fn)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openai

from models import serve
from models.chat import (  # noqa: F401 - data_url, parse_json_reply, system and user are used through this module
    Message,
    TopLogprobs,
    data_url,
    has_images,
    parse_json_reply,
    reply_texts,
    retry_after_seconds,
    shorten,
    stored_tops,
    system,
    user,
)
from models.llm_cache import ResponseCache
from models.llm_hub import hub
from models.settings import EndpointSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Choices = tuple[str, ...]

# Keyless local servers (vLLM, llama.cpp) accept any bearer token; the SDK insists on one.
PLACEHOLDER_KEY = "no-key"
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMError(RuntimeError):
    """A request that did not yield a usable reply; ``reason`` is short and countable."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class EndpointConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ChatReply:
    text: str
    finish_reason: str | None
    cached: bool
    attempts: int  # HTTP requests this reply cost: 0 when it came from the cache
    top_logprobs: TopLogprobs | None = None  # per reply token, when asked for and given
    choices: tuple[str, ...] = ()  # every choice's text when n > 1 was asked for (text is the first)


def resolve_api_key(endpoint: EndpointSettings) -> str:
    if endpoint.api_key_env:
        key = os.environ.get(endpoint.api_key_env)
        if not key:
            raise EndpointConfigError(
                f"environment variable {endpoint.api_key_env!r} (api_key_env of {endpoint.base_url}) is not set"
            )
        return key
    if endpoint.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return str(Secret.load(endpoint.api_key_secret).get())
        except Exception as exc:  # noqa: BLE001 - Prefect raises many kinds; the message must not carry the value
            raise EndpointConfigError(
                f"cannot load Prefect Secret block {endpoint.api_key_secret!r}: {type(exc).__name__}"
            ) from None
    return PLACEHOLDER_KEY


# Request fields an endpoint may not know, by the name a refusal message uses: each is dropped for
# good once the endpoint refuses it (HTTP 400/422), and tried in this order when the refusal does
# not say which field it means.
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "response_format": ("response_format",),
    "logprobs": ("logprobs", "top_logprobs"),
    "seed": ("seed",),
    "n": ("n",),
}
REFUSAL_STATUSES = frozenset({400, 422})


class RequestRefused(LLMError):
    """The endpoint refused the request itself (HTTP 400/422): it may not know a field."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"http_{status}", detail)


class LLMClient:
    def __init__(
        self, endpoint: EndpointSettings, cache_dir: str | os.PathLike[str] | None = None, served: str | None = None
    ):
        """``served``: what the endpoint's model name stands for, when the name alone does not say it
        (a LoRA module name registered anew each round): part of every cache key."""
        self.endpoint = endpoint
        self.served = served
        self._api_key = resolve_api_key(endpoint)
        self._cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._hub = hub()
        self._limits = self._hub.limits(endpoint)
        self.refused = self._limits.refused  # optional fields the endpoint refused or ignored: never sent again
        self.http: openai.AsyncOpenAI | None = None  # the process's client of this endpoint, once entered
        self._own_servers: serve.ServerPool | None = None
        # What identifies the endpoint in the response cache: its URL, or for a served model the
        # folder's content digest (the port and the path change from run to run, the model does not).
        self._cache_scope: Any = endpoint.base_url
        self.counts: dict[str, int] = {"requests": 0, "cache_hits": 0, "retries": 0, "errors": 0}

    def __repr__(self) -> str:
        return f"LLMClient({self.endpoint.base_url!r}, model={self.endpoint.model!r})"

    async def __aenter__(self) -> LLMClient:
        if self.endpoint.serve is not None:
            await asyncio.to_thread(self._use_served_model)
        self.http = self._hub.http(self.endpoint.base_url, self._api_key)
        return self

    def _use_served_model(self) -> None:
        """Point this client at the run's server for ``endpoint.serve`` (one of its own when the
        run has none: then it stops with the client)."""
        assert self.endpoint.serve is not None
        pool = serve.active_pool()
        if pool is None:
            pool = self._own_servers = serve.ServerPool()
        served = pool.served(self.endpoint.serve)
        self.endpoint = self.endpoint.model_copy(update={"base_url": served.base_url, "model": served.model})
        self._limits = self._hub.limits(self.endpoint)
        self.refused = self._limits.refused
        self._cache_scope = ("served", served.digest)

    async def __aexit__(self, *exc: Any) -> None:
        self.http = None  # shared with the process's other shards: the hub closes it at exit
        if self._cache is not None:
            self._cache.close()
        if self._own_servers is not None:
            await asyncio.to_thread(self._own_servers.close)
            self._own_servers = None

    def _redact(self, text: str) -> str:
        """Servers and proxies may echo the bearer token in an error body."""
        return text.replace(self._api_key, "***") if self._api_key != PLACEHOLDER_KEY else text

    def request_key(self, request: Mapping[str, Any]) -> str:
        if self.endpoint.serve is not None:
            request = {**request, "model": "served"}  # the folder path: named by _cache_scope's digest
        scope = self._cache_scope if self.served is None else [self._cache_scope, self.served]
        body = json.dumps([scope, request], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(body.encode()).hexdigest()

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        json_mode: bool = False,
        logprobs: int | None = None,
        top_p: float | None = None,
        n: int = 1,
    ) -> ChatReply:
        """One chat completion; raises LLMError (with a countable reason) when none is usable.

        ``json_mode``: ask for response_format=json_object; ``logprobs``: ask for that many top
        log-probabilities per reply token (``ChatReply.top_logprobs``; None when the endpoint
        gives none). Either is dropped for good once the endpoint refuses or ignores it. ``n``: that
        many choices (``ChatReply.choices``), or fewer (``transformers serve`` gives one).
        """
        if self.http is None:
            raise RuntimeError("LLMClient must be used as 'async with LLMClient(...) as client'")
        if has_images(messages) and not self.endpoint.images_allowed:
            raise LLMError(
                "images_not_allowed", f"endpoint {self.endpoint.base_url} may not receive images (allow_images)"
            )
        request: dict[str, Any] = {
            "model": self.endpoint.model,
            "messages": list(messages),
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            request["seed"] = seed
        if json_mode:
            request["response_format"] = {"type": "json_object"}
        if logprobs:
            request["logprobs"] = True
            request["top_logprobs"] = logprobs
        if top_p is not None:
            request["top_p"] = top_p
        if n > 1:
            request["n"] = n
        # Keyed by what was asked, not what was sent: a re-run hits the cache without first
        # learning again which fields the endpoint refuses.
        key = self.request_key(request)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            self.counts["cache_hits"] += 1
            tops = stored_tops(hit.get("top_logprobs"))
            choices = tuple(hit.get("choices") or (hit["text"],))
            reason = hit.get("finish_reason")
            return ChatReply(hit["text"], reason, cached=True, attempts=0, top_logprobs=tops, choices=choices)
        try:
            text, finish_reason, tops, attempts, choices = await self._negotiate(request)
        except LLMError as exc:
            self.counts["errors"] += 1
            raise LLMError(exc.reason, self._redact(exc.detail)) from None
        if logprobs and tops is None and "logprobs" not in self.refused:
            self._refuse("logprobs", "ignored: the reply carried none")
        if self._cache is not None:
            self._cache.put(
                key, {"text": text, "finish_reason": finish_reason, "top_logprobs": tops, "choices": list(choices)}
            )
        return ChatReply(text, finish_reason, cached=False, attempts=attempts, top_logprobs=tops, choices=choices)

    async def _negotiate(self, request: dict[str, Any]) -> tuple[str, str | None, TopLogprobs | None, int, Choices]:
        """Send ``request`` less the fields this endpoint refused. A refusal (400/422) drops an
        optional field for good and sends again: the field the error names or, when it names
        none, the one whose removal lets the request pass."""
        spent = 0
        while True:
            sent = self._without(request, self.refused)
            try:
                text, finish_reason, tops, attempts, choices = await self._send(sent)
                return text, finish_reason, tops, attempts + spent, choices
            except RequestRefused as refusal:
                spent += 1
                present = [group for group in OPTIONAL_FIELDS if group not in self.refused and _has(sent, group)]
                detail = refusal.detail.lower()
                named = [group for group in present if any(name in detail for name in OPTIONAL_FIELDS[group])]
                if named:
                    self._refuse(named[0], f"refused ({refusal.reason}: {refusal.detail})")
                    continue
                for group in present:
                    try:
                        text, finish_reason, tops, attempts, choices = await self._send(self._without(sent, {group}))
                    except RequestRefused:
                        spent += 1
                        continue
                    self._refuse(group, f"refused ({refusal.reason}; the request passed without it)")
                    return text, finish_reason, tops, attempts + spent, choices
                raise refusal from None

    def _refuse(self, group: str, why: str) -> None:
        self.refused.add(group)
        self.counts["refused"] = self.counts.get("refused", 0) + 1
        log.warning("LLM %s: %s %s; not sent to it again", self.endpoint.base_url, group, self._redact(why))

    @staticmethod
    def _without(request: dict[str, Any], groups: set[str]) -> dict[str, Any]:
        drop = {name for group in groups for name in OPTIONAL_FIELDS[group]}
        return {k: v for k, v in request.items() if k not in drop} if drop else request

    async def _send(self, request: dict[str, Any]) -> tuple[str, str | None, TopLogprobs | None, int, Choices]:
        """Send on the hub's loop, where the shared client and limits live. ``counts`` is written from
        both threads, each key by one of them (requests and retries there, the rest here)."""
        return await self._hub.run(self._attempts(request))

    async def _attempts(self, request: dict[str, Any]) -> tuple[str, str | None, TopLogprobs | None, int, Choices]:
        assert self.http is not None
        last: LLMError | None = None
        for attempt in range(self.endpoint.max_retries + 1):
            retry_after: float | None = None
            async with self._limits.slots:
                await self._limits.rate.wait()
                self.counts["requests"] += 1
                try:
                    completion = await self.http.chat.completions.create(**request, timeout=self.endpoint.timeout_s)
                    text, finish_reason, tops, choices = reply_texts(completion)
                    return text, finish_reason, tops, attempt + 1, choices
                except openai.APITimeoutError:
                    last = LLMError("timeout", f"no reply within {self.endpoint.timeout_s:g} s")
                except openai.APIConnectionError as exc:
                    last = LLMError("connection", type(exc.__cause__ or exc).__name__)
                except openai.APIStatusError as exc:
                    if exc.status_code in REFUSAL_STATUSES:
                        raise RequestRefused(exc.status_code, shorten(exc.message)) from None
                    last = LLMError(
                        "rate_limited" if exc.status_code == 429 else f"http_{exc.status_code}", shorten(exc.message)
                    )
                    if exc.status_code not in RETRY_STATUSES and exc.status_code < 500:
                        raise last from None
                    retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
                    if retry_after is not None and retry_after > self.endpoint.max_backoff_s:
                        raise LLMError(
                            last.reason,
                            f"server asks to retry after {retry_after:g} s, more than "
                            f"max_backoff_s={self.endpoint.max_backoff_s:g}",
                        ) from None
                    if retry_after is not None:
                        self._limits.rate.pause(retry_after)
                except (openai.APIResponseValidationError, ValueError, LLMError) as exc:
                    last = exc if isinstance(exc, LLMError) else LLMError("malformed_response", shorten(str(exc)))
            if attempt < self.endpoint.max_retries:
                self.counts["retries"] += 1
                delay = (
                    retry_after
                    if retry_after is not None
                    else self.endpoint.backoff_s * 2**attempt * (1 + 0.25 * random.random())
                )
                delay = min(delay, self.endpoint.max_backoff_s)
                log.info("LLM %s: %s; retry %d in %.2f s", self.endpoint.base_url, last.reason, attempt + 1, delay)
                await asyncio.sleep(delay)
        assert last is not None
        raise LLMError(last.reason, f"{last.detail} (after {self.endpoint.max_retries + 1} attempts)")


def _has(request: Mapping[str, Any], group: str) -> bool:
    return any(name in request for name in OPTIONAL_FIELDS[group])


def served_models(endpoint: EndpointSettings) -> list[str]:
    """The model names the endpoint serves (``GET /models``; vLLM lists its LoRA modules there);
    LLMError when it does not answer."""
    shared = hub()
    http = shared.http(endpoint.base_url, resolve_api_key(endpoint))

    async def names() -> list[str]:
        return [model.id for model in (await http.models.list(timeout=endpoint.timeout_s)).data]

    try:
        return shared.wait(names())
    except openai.OpenAIError as exc:
        raise LLMError("models_unlisted", f"{endpoint.base_url}/models: {type(exc).__name__}") from None


def run_with_client(
    endpoint: EndpointSettings,
    cache_dir: str | os.PathLike[str] | None,
    work: Callable[[LLMClient], Awaitable[T]],
    served: str | None = None,
) -> T:
    """Run ``await work(client)`` from synchronous code (stages are synchronous functions)."""

    async def main() -> T:
        async with LLMClient(endpoint, cache_dir, served) as client:
            return await work(client)

    return run_sync(main)


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to its end from synchronous code. Inside an already running
    event loop (an async Prefect task, a notebook) it runs on its own loop in a helper thread,
    since a loop cannot be re-entered."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]
