"""An OpenAI-compatible endpoint that misbehaves on cue, for fault tests of hallucinate and score.

A sample's question names its case (``... (case slow)``); the injection prompt (hallucinate's
``llm`` backend) and the judge prompt (score's ``endpoint`` judges) both carry the question,
so one server plays both roles:

- ``ok``: a valid answer / a score of 0.8;
- ``limited``: 429 with Retry-After: 300 (a provider rate-limiting for minutes);
- ``slow``: answers after 3 s, past the client's timeout;
- ``flaky``: 503 on the first request of each role, then valid;
- ``outofrange``: a valid injection, but the judge scores 1.7 (outside [0, 1]).
"""

from __future__ import annotations

import json
import re
import socket
import threading

from tests.support.openai_server import LoggedRequest, Reply

CASES = ("ok", "limited", "slow", "flaky", "outofrange")
SLOW_S = 3.0
FLIP = {"yes": "No", "no": "Yes"}


def question(case: str) -> str:
    return f"Is there a lesion? (case {case})"


def refused_base_url() -> str:
    """A local URL nothing listens on: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class FaultyResponder:
    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, request: LoggedRequest) -> str | Reply:
        text = request.prompt_text
        case = re.search(r"\(case (\w+)\)", text).group(1)
        kind = role(request)
        if case == "limited":
            return Reply(status=429, retry_after=300)
        if case == "slow":
            return Reply("too late", delay_s=SLOW_S)
        if case == "flaky":
            with self._lock:
                first = (case, kind) not in self._seen
                self._seen.add((case, kind))
            if first:
                return Reply(status=503)
        if kind == "judge":
            score = 1.7 if case == "outofrange" else 0.8
            return json.dumps({"score": score, "reason": "changes the finding"})
        answer = re.search(r"Correct answer: (.*)", text).group(1).strip()
        return json.dumps({"rejected": FLIP.get(answer.lower(), "No"), "error_type": "yes_no_flip"})


def role(request: LoggedRequest) -> str:
    return "judge" if "clinical relevance" in request.prompt_text else "inject"


def count(requests: list[LoggedRequest], case: str, of_role: str) -> int:
    return sum(1 for r in requests if f"(case {case})" in r.prompt_text and role(r) == of_role)
