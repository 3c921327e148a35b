"""What a chat request is made of and what comes back, apart from sending it: messages (images
as data URLs), JSON inside a reply, the top log-probabilities of a reply's tokens, and the
text of what a server answered (an error message, a Retry-After header)."""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Message = dict[str, Any]
# Top log-probabilities per generated token: ((token, logprob), ...) for each position.
TopLogprobs = tuple[tuple[tuple[str, float], ...], ...]


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


def top_logprobs(choice: Any, positions: int = 3) -> TopLogprobs | None:
    """The top log-probabilities of a reply's first ``positions`` tokens (OpenAI's
    ``choices[0].logprobs.content[i].top_logprobs``); None when the reply carries none."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    found = []
    for token in content[:positions]:
        tops = getattr(token, "top_logprobs", None) or []
        found.append(tuple((str(t.token), float(t.logprob)) for t in tops))
    return tuple(found) if any(found) else None


def stored_tops(value: Any) -> TopLogprobs | None:
    """Top log-probabilities as the response cache stores them (JSON lists) -> tuples."""
    if not value:
        return None
    return tuple(tuple((str(token), float(logprob)) for token, logprob in position) for position in value)


def reply_texts(completion: Any) -> tuple[str, str | None, TopLogprobs | None, tuple[str, ...]]:
    """A completion's first text, finish reason and top log-probabilities, and every choice's text;
    ValueError when it has no text (a malformed reply)."""
    choices = getattr(completion, "choices", None)
    if not choices:
        raise ValueError("no choices in the reply")
    texts = tuple(getattr(getattr(choice, "message", None), "content", None) for choice in choices)
    if not all(isinstance(text, str) for text in texts):
        raise ValueError("reply has no text content")
    return texts[0], getattr(choices[0], "finish_reason", None), top_logprobs(choices[0]), texts


def retry_after_seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from LLM servers; the exponential backoff applies


def shorten(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
