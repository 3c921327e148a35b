"""The experiment's worker pool joins the flow run's server or refuses to start (the whole path, workers
reporting to the test's server, is tests/experiments/test_flow.py)."""

from __future__ import annotations

import os

import pytest

from experiments.grounding.workers import API_SETTING, worker_pool
from flows.server import run_api_url


def test_outside_a_flow_run_there_is_no_server_to_join_and_no_pool():
    assert run_api_url() is None
    before = os.environ.get(API_SETTING)
    with pytest.raises(RuntimeError, match="inside a flow run"):
        with worker_pool(1):
            pass
    assert os.environ.get(API_SETTING) == before
