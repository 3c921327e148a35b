"""One Prefect test harness (a real local server on SQLite) for the whole session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    # Startup takes 10-20 s on these machines; 90 s leaves room for a loaded CI box.
    with prefect_test_harness(server_startup_timeout=90), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        yield


def task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name for one flow run, read back through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def task_run_names(flow_run_id, at_least: int = 0, wait_s: float = 60.0) -> list[str]:
    """Every task run name of one flow run (shard runs included), sorted.

    Task runs on other processes (Dask, Ray workers) reach the server as events, processed
    after the flow returns: ``at_least`` waits (up to ``wait_s``) until that many are there.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + wait_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if len(runs) >= at_least or time.monotonic() > deadline:
            return sorted(run.name for run in runs)
        time.sleep(0.5)


def subflow_task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name over a parent flow run's sub-flow runs (pipeline -> curate, train,
    evaluate), shard runs left out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
    states: dict[str, str] = {}
    for child in children:
        states.update({name: state for name, state in task_states(child.id).items() if "-shard" not in name})
    return states
