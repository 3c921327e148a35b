"""One LLM client per worker process and endpoint: every shard of a run sends through it, under
the endpoint's limits."""

import asyncio
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

from models.llm import LLMClient, run_with_client, system, user
from tasks.config import EndpointConfig
from tests.models.test_llm import ask, endpoint


def shards(config, count: int, prompts_per_shard: int):
    """``count`` shards at once, as the thread task runner runs them: each its own thread, event
    loop and ``LLMClient``, all of one endpoint."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(ask, config, [f"shard {s} prompt {p}" for p in range(prompts_per_shard)]) for s in range(count)
        ]
        return [future.result() for future in futures]


def test_shards_of_a_run_share_one_client_and_its_in_flight_limit(openai_server):
    openai_server.latency_s = 0.05
    config = endpoint(openai_server, max_concurrency=3)
    seen = []

    async def shard(client: LLMClient):
        seen.append((threading.get_ident(), client.http))
        return await asyncio.gather(*(client.chat([system("sys"), user(f"p{p}")]) for p in range(5)))

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: run_with_client(config, None, shard), range(6)))
    assert sum(len(replies) for replies in results) == 30 == len(openai_server.requests)
    assert len({thread for thread, _ in seen}) == 6  # six shards, six threads and event loops
    assert len({id(http) for _, http in seen}) == 1  # ... and one HTTP client
    # Six shards of five concurrent requests: a limit per client would have put up to 18 at once.
    assert openai_server.max_concurrent == 3
    # One connection pool: at most 3 requests in flight need at most 3 connections; a client per
    # shard opens at least one connection of its own each (6).
    assert len({request.peer for request in openai_server.requests}) <= 3


def test_shards_of_a_run_share_the_request_rate(openai_server, releases):
    shards(endpoint(openai_server, rpm=300), count=4, prompts_per_shard=2)
    assert len(openai_server.requests) == len(releases) == 8
    # 300 rpm: one start every 0.2 s across all shards; a limiter per client would have let the
    # four shards' first requests start together.
    assert releases.on_schedule(0.2)


def test_a_cancelled_shard_gives_its_slot_back(openai_server):
    """A shard cancelled while its request is in flight (a Prefect task cancelled) cancels the
    request on the shared client: the endpoint's only slot serves the next shard."""
    openai_server.latency_s = 0.5
    config = endpoint(openai_server, max_concurrency=1, timeout_s=10.0)

    async def cancelled(client: LLMClient):
        task = asyncio.ensure_future(client.chat([user("slow")]))
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task.cancelled()

    assert run_with_client(config, None, cancelled)
    openai_server.latency_s = 0.0

    async def after(client: LLMClient):
        return await asyncio.wait_for(client.chat([user("next")]), timeout=5)

    assert run_with_client(config, None, after).text == "echo: next"


def ask_from_a_child(base_url: str) -> str:
    (reply,), _ = ask(EndpointConfig(base_url=base_url, model="m", timeout_s=5.0, max_retries=0), ["child"])
    return reply.text


def test_a_forked_worker_process_makes_its_own_client(openai_server):
    """A process runner's forked worker inherits the parent's hub but not its loop thread: it makes its own."""
    (reply,), _ = ask(endpoint(openai_server), ["parent"])  # the parent's hub is running
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(ask_from_a_child, (openai_server.base_url,)).get(timeout=60) == "echo: sys\nchild"


def test_a_stopped_servers_client_is_closed_and_forgotten(tmp_path):
    """A long-lived worker serves each run on a new port: the hub drops a stopped server's client
    and limits instead of keeping a pool per port it ever served on."""
    from models import llm_hub
    from models.serve import ManagedServer
    from tasks.config.endpoint import ServeConfig

    hub = llm_hub.hub()
    gone, kept = "http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"
    clients = {url: hub.http(url, "key") for url in (gone, kept)}
    hub.limits(EndpointConfig(base_url=gone, model="m"))
    server = ManagedServer(ServeConfig(model=str(tmp_path)))
    server.port = 9  # as if it had served there (stop() signals no process: none was started)
    server.stop()
    assert clients[gone].is_closed() and not clients[kept].is_closed()
    assert hub.http(kept, "key") is clients[kept]
    assert hub.http(gone, "key") is not clients[gone]  # a new client if the URL is served again
    assert not any(key[0] == gone for key in hub._limits)


def test_a_client_that_fails_to_close_does_not_stop_the_server_stopping(tmp_path, monkeypatch, caplog):
    """Closing a stopped server's connections is tidying up: its failure is logged, the client is
    still dropped, and stop() returns (a pool stopping several servers goes on to the next)."""
    from models import llm_hub
    from models.serve import ManagedServer
    from tasks.config.endpoint import ServeConfig

    async def refuse(clients):
        raise OSError("connection reset")

    hub = llm_hub.hub()
    url = "http://127.0.0.1:11/v1"
    client = hub.http(url, "key")
    monkeypatch.setattr(llm_hub, "_close_all", refuse)
    server = ManagedServer(ServeConfig(model=str(tmp_path)))
    server.port = 11
    with caplog.at_level("WARNING", logger=llm_hub.log.name):
        assert server.stop() is None
    assert hub.http(url, "key") is not client
    assert any("not closed cleanly: OSError" in r.getMessage() for r in caplog.records)
