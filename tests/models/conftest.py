"""Fixtures of the model-layer tests."""

import time

import pytest

from models.llm_limits import RateLimiter


class Releases(list):
    """When the rate limiter let each request start (monotonic seconds), and when the first request
    asked to. A sleep never ends early, but a released request's thread may resume late under load,
    so two releases can sit closer than the interval; what always holds is that the i-th release
    (in time order) comes no sooner than i intervals after the first request asked."""

    first_asked = float("inf")

    def on_schedule(self, interval_s: float) -> bool:
        return all(released >= self.first_asked + i * interval_s - 1e-6 for i, released in enumerate(sorted(self)))


@pytest.fixture
def releases(monkeypatch) -> Releases:
    times = Releases()
    wait = RateLimiter.wait

    async def recorded(self):
        times.first_asked = min(times.first_asked, time.monotonic())
        await wait(self)
        times.append(time.monotonic())

    monkeypatch.setattr(RateLimiter, "wait", recorded)
    return times
