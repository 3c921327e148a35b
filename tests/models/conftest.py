"""Fixtures of the model-layer tests."""

import time

import pytest

from models.llm_limits import RateLimiter


@pytest.fixture
def releases(monkeypatch) -> list[float]:
    """When the rate limiter let each request start (monotonic seconds, in order). A sleep never
    ends early, so these spacings hold however loaded the machine is; arrival times at the server
    do not (a request released first can arrive last)."""
    times: list[float] = []
    wait = RateLimiter.wait

    async def recorded(self):
        await wait(self)
        times.append(time.monotonic())

    monkeypatch.setattr(RateLimiter, "wait", recorded)
    return times
