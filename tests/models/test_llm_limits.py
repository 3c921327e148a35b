"""An endpoint's limits hold for the whole worker process: every shard's client draws on them."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from models.llm_limits import Slots
from tests.models.test_llm import ask, endpoint


def shards(config, count: int, prompts_per_shard: int):
    """``count`` shards at once, as the thread task runner runs them: each its own thread, event
    loop and client, all of one endpoint."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [
            pool.submit(ask, config, [f"shard {s} prompt {p}" for p in range(prompts_per_shard)]) for s in range(count)
        ]
        return [future.result() for future in futures]


def test_shards_of_a_run_share_the_endpoints_in_flight_limit(openai_server):
    openai_server.latency_s = 0.05
    results = shards(endpoint(openai_server, max_concurrency=3), count=6, prompts_per_shard=5)
    assert all(not isinstance(reply, Exception) for replies, _ in results for reply in replies)
    assert len(openai_server.requests) == 30
    # Six shards of five concurrent requests: a limit per client would have put up to 18 at once.
    assert openai_server.max_concurrent == 3


def test_shards_of_a_run_share_the_request_rate(openai_server):
    shards(endpoint(openai_server, rpm=300), count=4, prompts_per_shard=2)
    starts = sorted(request.started for request in openai_server.requests)
    assert len(starts) == 8
    # 300 rpm: one start every 0.2 s across all shards, so 8 starts span 1.4 s (arrivals jitter with
    # each shard's connection set-up); a limit per client would have let them all through in 0.2 s.
    assert starts[-1] - starts[0] > 1.2


def test_a_cancelled_wait_never_loses_a_slot():
    slots = Slots(1)
    entered = []

    async def holder(release: asyncio.Event):
        async with slots.held():
            await release.wait()

    async def main():
        release = asyncio.Event()
        first = asyncio.create_task(holder(release))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(holder(asyncio.Event()))
        await asyncio.sleep(0)
        waiting.cancel()
        release.set()
        await first
        await asyncio.gather(waiting, return_exceptions=True)

        async def enter():
            async with slots.held():
                entered.append(threading.get_ident())

        await asyncio.wait_for(enter(), timeout=2)

    asyncio.run(main())
    assert len(entered) == 1 and slots._free == 1
