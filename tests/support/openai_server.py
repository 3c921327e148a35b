"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1/chat/completions`` with OpenAI-format JSON. What it answers is
scripted: a queue of ``Reply`` objects is consumed first (one per request, in arrival
order), then ``responder(request_body) -> str | Reply`` decides. A ``Reply`` can carry
latency, an HTTP error status (429 with Retry-After, 500, ...), a malformed body, or a
delay past the client's timeout. Every request is logged with its body and headers, and
the server counts the most requests it ever had in flight at once. A ``Reply`` with
``top_logprobs`` answers a request that asked for logprobs with them (OpenAI's format).
``GET /health`` answers 200, so ``python -m tests.support.openai_server --port N`` stands in
for a served model (``serve.command``) where starting a real one would only cost time.

Use the ``openai_server`` fixture (import it into a test module) or ``OpenAIServer`` as a
context manager.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    delay_s: float = 0.0
    body: bytes | None = None  # sent verbatim instead of a completion (malformed JSON tests)
    retry_after: float | None = None
    finish_reason: str = "stop"
    # Per reply token, the top (token, logprob) pairs; sent when the request asks for logprobs.
    top_logprobs: list[list[tuple[str, float]]] | None = None
    # Several choices in one reply (vLLM's answer to n > 1); unset: one choice, ``content``.
    choices: list[str] | None = None


@dataclass
class LoggedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it was not JSON
    started: float
    finished: float | None = None
    peer: tuple[str, int] | None = None  # the client's address: one per TCP connection

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.body.get("messages", []) if isinstance(self.body, dict) else []

    @property
    def prompt_text(self) -> str:
        """All text parts of all messages, joined: what a scripted responder matches on."""
        parts = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        return "\n".join(parts)


def echo_responder(request: LoggedRequest) -> str:
    return f"echo: {request.prompt_text[-200:]}"


@dataclass
class _State:
    responder: Callable[[LoggedRequest], str | Reply]
    latency_s: float
    script: collections.deque = field(default_factory=collections.deque)
    log: list[LoggedRequest] = field(default_factory=list)
    in_flight: int = 0
    models: list[str] = field(default_factory=lambda: ["test-model"])  # what GET /models lists
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)
    next_id: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers; clients pool connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._send(200, b'{"status": "ok"}')
        elif self.path.rstrip("/").endswith("/models"):
            models = [{"id": name, "object": "model"} for name in self.server.state.models]
            self._send(200, json.dumps({"object": "list", "data": models}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = LoggedRequest(self.path, headers, body, time.monotonic(), peer=self.client_address)
        with state.lock:
            state.log.append(entry)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            scripted = state.script.popleft() if state.script else None
            state.next_id += 1
            completion_id = state.next_id
        try:
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            reply = scripted if scripted is not None else state.responder(entry)
            if isinstance(reply, str):
                reply = Reply(content=reply)
            # Sleeping on the event lets close() end slow handlers at once.
            state.closing.wait(state.latency_s + reply.delay_s)
            self._answer(reply, completion_id, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer
        finally:
            entry.finished = time.monotonic()
            with state.lock:
                state.in_flight -= 1

    def _answer(self, reply: Reply, completion_id: int, body: Any) -> None:
        if reply.body is not None:
            self._send(reply.status, reply.body)
            return
        if reply.status != 200:
            headers = {"Retry-After": f"{reply.retry_after:g}"} if reply.retry_after is not None else {}
            error = {"error": {"message": f"scripted {reply.status}", "type": "server_error", "code": reply.status}}
            self._send(reply.status, json.dumps(error).encode(), headers)
            return
        model = body.get("model", "test-model") if isinstance(body, dict) else "test-model"
        words = len(reply.content.split())
        logprobs = None
        if reply.top_logprobs is not None and isinstance(body, dict) and body.get("logprobs"):
            logprobs = {
                "content": [
                    {
                        "token": tops[0][0],
                        "logprob": tops[0][1],
                        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops],
                    }
                    for tops in reply.top_logprobs
                ]
            }
        completion = {
            "id": f"chatcmpl-test-{completion_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": reply.finish_reason,
                    "logprobs": logprobs,
                }
                for index, content in enumerate(reply.choices or [reply.content])
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": words, "total_tokens": 10 + words},
        }
        self._send(200, json.dumps(completion).encode())

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 resets connections when a client opens many at once
    state: _State


class OpenAIServer:
    def __init__(self, responder: Callable[[LoggedRequest], str | Reply] = echo_responder, latency_s: float = 0.0):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State(responder=responder, latency_s=latency_s)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="openai-test-server", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._server.state.lock:
            return list(self._server.state.log)

    @property
    def max_concurrent(self) -> int:
        return self._server.state.max_in_flight

    @property
    def latency_s(self) -> float:
        return self._server.state.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._server.state.latency_s = value

    def serve_models(self, *names: str) -> None:
        """What ``GET /models`` lists from now on (a vLLM server lists its LoRA modules there)."""
        self._server.state.models = list(names)

    def set_responder(self, responder: Callable[[LoggedRequest], str | Reply]) -> None:
        self._server.state.responder = responder

    def script(self, *replies: str | Reply) -> None:
        """Queue replies for the next requests, in arrival order, before the responder."""
        with self._server.state.lock:
            self._server.state.script.extend(Reply(content=r) if isinstance(r, str) else r for r in replies)

    def reset(self) -> None:
        state = self._server.state
        with state.lock:
            state.log.clear()
            state.script.clear()
            state.max_in_flight = state.in_flight

    def close(self) -> None:
        self._server.state.closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


if __name__ == "__main__":  # a stand-in served model: echoes, answers /health, stops on SIGTERM
    import argparse
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid-file", help="write this process's id there (tests check it is gone)")
    parser.add_argument("model", nargs="?")
    args = parser.parse_args()
    port = args.port
    if args.pid_file:
        import os

        with open(args.pid_file, "a") as handle:
            handle.write(f"{os.getpid()}\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = _Server(("127.0.0.1", port), _Handler)
    server.state = _State(responder=echo_responder, latency_s=0.0)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    stop.wait()
    server.shutdown()
