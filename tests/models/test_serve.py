"""Served endpoints (``serve: <folder>``): a server per run started on first use, the URL and the
folder path out of every key, a clear error when it never comes up, nothing left running.

A stand-in command (the scripted test server as a process) plays the model server here; the
real ``transformers serve`` on the real model: tests/models/test_smollm2_served.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from models import serve
from models.llm import LLMClient, user
from tasks.config import EndpointConfig, HallucinateConfig, ServeConfig, identity
from tasks.store import ArtifactStore

STAND_IN = [sys.executable, "-m", "tests.support.openai_server", "--port", "{port}", "{model}"]


def served_endpoint(folder, **serve_fields) -> EndpointConfig:
    return EndpointConfig(serve=ServeConfig(model=folder, command=STAND_IN, **serve_fields), backoff_s=0, timeout_s=10)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not open(f"/proc/{pid}/stat").read().split()[2] == "Z"


async def chat_once(endpoint, cache_dir=None, text="hello"):
    async with LLMClient(endpoint, cache_dir) as client:
        reply = await client.chat([user(text)], max_tokens=4)
        return reply, client.endpoint, client.request_key({"model": client.endpoint.model, "messages": []})


def test_serve_shorthand_identity_and_refused_url(tmp_path):
    short = EndpointConfig.model_validate({"serve": str(tmp_path)})
    assert short.serve == ServeConfig(model=tmp_path)
    moved = short.model_copy(update={"base_url": "http://127.0.0.1:5/v1", "model": "/elsewhere"})
    assert identity(moved) == identity(short) and "serve" in identity(short)
    assert "base_url" in identity(EndpointConfig())  # a called endpoint is named by its URL
    assert EndpointConfig.model_validate(short.model_dump(mode="json")) == short  # `config show` loads back
    with pytest.raises(ValueError, match="leave it unset"):
        EndpointConfig(serve=tmp_path, model="x")
    with pytest.raises(ValueError, match="does not read images"):
        HallucinateConfig(backend="llm", send_images=True, llm=short)


def test_a_run_serves_the_folder_once_and_stops_it_when_it_ends(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    endpoint = served_endpoint(model)
    with serve.serving(ArtifactStore(tmp_path / "store").digests) as pool:
        first, used, key = asyncio.run(chat_once(endpoint, tmp_path / "cache"))
        second, again, key2 = asyncio.run(chat_once(endpoint, tmp_path / "cache"))
        (server,) = pool.servers
        pid = server.process.pid
        assert used.base_url == server.base_url and used.model == str(model.resolve())
        assert first.text == "echo: hello" and not first.cached and second.cached  # one cache, whatever the port
        assert key == key2 and alive(pid)
    assert not alive(pid) and pool.closed
    # Another run, another port: the cache key is the same (the folder's content, not the URL).
    with serve.serving(ArtifactStore(tmp_path / "store").digests) as pool:
        third, used3, key3 = asyncio.run(chat_once(endpoint, tmp_path / "cache"))
    assert third.cached and key3 == key
    (model / "weights.bin").write_bytes(b"new")  # new content: a new key
    _, _, key4 = asyncio.run(chat_once(endpoint, tmp_path / "cache"))
    assert key4 != key


def test_a_client_outside_any_run_serves_for_itself_and_stops_it(tmp_path):
    (tmp_path / "m").mkdir()
    pids = []

    async def work():
        async with LLMClient(served_endpoint(tmp_path / "m")) as client:
            pids.append(client._own_servers.servers[0].process.pid)
            return (await client.chat([user("x")], max_tokens=2)).text

    assert asyncio.run(work()) == "echo: x"
    assert pids and not alive(pids[0])


def test_a_server_that_never_comes_up_is_a_clear_error_with_its_log(tmp_path):
    (tmp_path / "m").mkdir()
    crash = [sys.executable, "-c", "import sys; print('cannot load weights: broken shard'); sys.exit(3)"]
    with serve.serving() as pool, pytest.raises(serve.ServerError) as failure:
        pool.served(ServeConfig(model=tmp_path / "m", command=crash))
    assert "exited with status 3" in str(failure.value) and "cannot load weights: broken shard" in str(failure.value)
    silent = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"]
    with serve.serving() as pool, pytest.raises(serve.ServerError, match=r"did not answer within 1 s(.|\n)*loading"):
        pool.served(ServeConfig(model=tmp_path / "m", command=silent, startup_timeout_s=1))
    with pytest.raises(serve.ServerError, match="does not exist"), serve.serving() as pool:
        pool.served(ServeConfig(model=tmp_path / "missing", command=STAND_IN))


def test_the_server_dies_with_the_run_even_without_cleanup(tmp_path):
    """A run killed outright (no finally, no atexit) takes its server with it (PR_SET_PDEATHSIG)."""
    (tmp_path / "m").mkdir()
    script = "\n".join(
        [
            "import os, signal",
            "from models import serve",
            "from tasks.config import ServeConfig",
            "pool = serve.ServerPool()",
            f"pool.served(ServeConfig(model={str(tmp_path / 'm')!r}, command={STAND_IN!r}))",
            "print(pool.servers[0].process.pid, flush=True)",
            "os.kill(os.getpid(), signal.SIGKILL)",
        ]
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    pid = int(run.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
