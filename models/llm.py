"""Async client for OpenAI-compatible chat endpoints (GPT-4o, vLLM, llama.cpp server).

What every caller of an LLM in this project needs, in one place:

- bounded concurrency (``max_concurrency`` requests in flight) and a client-side
  requests-per-minute limit, so a large curation run neither floods a local server nor
  trips a provider's rate limiter;
- retries with exponential backoff on 429, 5xx, timeouts, connection errors and malformed
  response bodies (a ``Retry-After`` header wins; one longer than ``max_backoff_s`` ends the
  retries at once: a provider rate-limiting for minutes would otherwise hold every sample for
  minutes), and a short, countable ``LLMError.reason`` when retries run out, so callers can
  turn a failure into a row instead of a crash;
- an on-disk response cache keyed by the full request (sqlite under ``cache_dir``), so a
  re-run never pays twice - callers that want a different answer change the request (e.g. a
  ``seed`` per attempt);
- images only go to endpoints allowed to receive them (by default local ones);
- the API key is read from the environment variable (or Prefect Secret block) named in
  the config and lives only inside the HTTP client: never in reprs, logs or errors (an error
  body that echoes it back is redacted before it becomes an ``LLMError``).

Usage::

    async with LLMClient(endpoint, cache_dir) as llm:
        reply = await llm.chat([system("..."), user("...")], temperature=0.0, max_tokens=256)
        reply.text, reply.cached

or, from synchronous code, ``run_with_client(endpoint, cache_dir, async_fn)``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import mimetypes
import os
import random
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai

from tasks.config import EndpointConfig
from tasks.store import content_hash

log = logging.getLogger(__name__)

T = TypeVar("T")
Message = dict[str, Any]

CACHE_FILE = "llm-cache.sqlite"
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


def system(text: str) -> Message:
    return {"role": "system", "content": text}


def user(text: str, images: Sequence[str | os.PathLike[str] | bytes] = ()) -> Message:
    """A user message; images (paths or PNG bytes) become data-URL image parts."""
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts.extend({"type": "image_url", "image_url": {"url": data_url(image)}} for image in images)
    return {"role": "user", "content": parts}


def data_url(image: str | os.PathLike[str] | bytes) -> str:
    if isinstance(image, bytes):
        data, mime = image, "image/png"
    else:
        path = Path(image)
        data, mime = path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def has_images(messages: Sequence[Message]) -> bool:
    return any(
        isinstance(m.get("content"), list) and any(p.get("type") == "image_url" for p in m["content"]) for m in messages
    )


def parse_json_reply(text: str) -> Any | None:
    """The first JSON object in a model reply, tolerating code fences and chatter around it.

    Models wrap JSON in ```json fences, prefix it with "Sure! Here it is:", or append notes;
    None when no object parses (the caller records that as a malformed reply).
    """
    cleaned = re.sub(r"```(?:json)?", "", text, flags=re.IGNORECASE)
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[{\[]", cleaned):
        try:
            value, _ = decoder.raw_decode(cleaned, match.start())
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def resolve_api_key(endpoint: EndpointConfig) -> str:
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


class ResponseCache:
    """Replies by request key, in one sqlite file (safe across processes, atomic per row)."""

    def __init__(self, folder: str | os.PathLike[str]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / CACHE_FILE
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, reply: Mapping[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, json.dumps(reply), time.time()))

    def close(self) -> None:
        self._db.close()


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts: servers see a steady rate),
    and holds every start while the server has asked the client to back off (Retry-After):
    one 429 pauses the whole client, not only the request that met it."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, time.monotonic() + seconds)

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class LLMClient:
    def __init__(self, endpoint: EndpointConfig, cache_dir: str | os.PathLike[str] | None = None):
        self.endpoint = endpoint
        self._api_key = resolve_api_key(endpoint)
        self._cache = ResponseCache(cache_dir) if cache_dir is not None else None
        self._semaphore = asyncio.Semaphore(endpoint.max_concurrency)
        self._limiter = RateLimiter(endpoint.rpm)
        self._client: openai.AsyncOpenAI | None = None
        self.counts: dict[str, int] = {"requests": 0, "cache_hits": 0, "retries": 0, "errors": 0}

    def __repr__(self) -> str:
        return f"LLMClient({self.endpoint.base_url!r}, model={self.endpoint.model!r})"

    async def __aenter__(self) -> LLMClient:
        # Our own retry loop owns retries and timeouts, so the SDK's are off.
        self._client = openai.AsyncOpenAI(
            api_key=self._api_key,
            base_url=self.endpoint.base_url,
            timeout=self.endpoint.timeout_s,
            max_retries=0,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._cache is not None:
            self._cache.close()

    def _redact(self, text: str) -> str:
        """Servers and proxies may echo the bearer token in an error body."""
        return text.replace(self._api_key, "***") if self._api_key != PLACEHOLDER_KEY else text

    def request_key(self, request: Mapping[str, Any]) -> str:
        return content_hash(self.endpoint.base_url, request, length=64)

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        seed: int | None = None,
        json_mode: bool = False,
    ) -> ChatReply:
        """One chat completion; raises LLMError (with a countable reason) when none is usable."""
        if self._client is None:
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
        key = self.request_key(request)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            self.counts["cache_hits"] += 1
            return ChatReply(hit["text"], hit.get("finish_reason"), cached=True, attempts=0)
        try:
            text, finish_reason, attempts = await self._send(request)
        except LLMError as exc:
            self.counts["errors"] += 1
            raise LLMError(exc.reason, self._redact(exc.detail)) from None
        if self._cache is not None:
            self._cache.put(key, {"text": text, "finish_reason": finish_reason})
        return ChatReply(text, finish_reason, cached=False, attempts=attempts)

    async def _send(self, request: dict[str, Any]) -> tuple[str, str | None, int]:
        assert self._client is not None
        last: LLMError | None = None
        for attempt in range(self.endpoint.max_retries + 1):
            retry_after: float | None = None
            async with self._semaphore:
                await self._limiter.wait()
                self.counts["requests"] += 1
                try:
                    completion = await self._client.chat.completions.create(**request)
                    return (*_reply_text(completion), attempt + 1)
                except openai.APITimeoutError:
                    last = LLMError("timeout", f"no reply within {self.endpoint.timeout_s:g} s")
                except openai.APIConnectionError as exc:
                    last = LLMError("connection", type(exc.__cause__ or exc).__name__)
                except openai.APIStatusError as exc:
                    last = LLMError(
                        "rate_limited" if exc.status_code == 429 else f"http_{exc.status_code}", _short(exc.message)
                    )
                    if exc.status_code not in RETRY_STATUSES and exc.status_code < 500:
                        raise last from None
                    retry_after = _retry_after(exc.response.headers.get("retry-after"))
                    if retry_after is not None and retry_after > self.endpoint.max_backoff_s:
                        raise LLMError(
                            last.reason,
                            f"server asks to retry after {retry_after:g} s, more than "
                            f"max_backoff_s={self.endpoint.max_backoff_s:g}",
                        ) from None
                    if retry_after is not None:
                        self._limiter.pause(retry_after)
                except (openai.APIResponseValidationError, ValueError, LLMError) as exc:
                    last = exc if isinstance(exc, LLMError) else LLMError("malformed_response", _short(str(exc)))
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


def _reply_text(completion: Any) -> tuple[str, str | None]:
    choices = getattr(completion, "choices", None)
    if not choices:
        raise LLMError("malformed_response", "no choices in the reply")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str):
        raise LLMError("malformed_response", "reply has no text content")
    return text, getattr(choices[0], "finish_reason", None)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from LLM servers; the exponential backoff applies


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_with_client(
    endpoint: EndpointConfig, cache_dir: str | os.PathLike[str] | None, work: Callable[[LLMClient], Awaitable[T]]
) -> T:
    """Run ``await work(client)`` from synchronous code (stages are synchronous functions)."""

    async def main() -> T:
        async with LLMClient(endpoint, cache_dir) as client:
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
