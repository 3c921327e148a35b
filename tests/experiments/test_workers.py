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


def test_a_failed_job_is_kept_for_later_and_a_finished_one_notes_its_build_seconds():
    from concurrent.futures import Future

    from experiments.grounding.flow import collected

    built, failed = {}, []
    done, broken = Future(), Future()
    done.set_result((["rows"], {("sft", "k1"): 12.5}))
    broken.set_exception(ValueError("seed 3's SFT"))

    assert collected(broken, built, failed) is None
    assert collected(done, built, failed) == ["rows"]
    assert built == {("sft", "k1"): 12.5}
    assert [str(error) for error in failed] == ["seed 3's SFT"]
