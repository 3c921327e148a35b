"""Prefect's temporary server dies with the run that started it, also one killed outright, and
the run waits long enough for it on a loaded machine unless the user said otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def alive(process: Path) -> bool:
    try:
        return b"State:\tZ" not in (process / "status").read_bytes()  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_killed_run_takes_its_temporary_server_with_it(tmp_path):
    script = textwrap.dedent(
        """
        import sys, time
        import flows  # ties Prefect's temporary server to this process
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        print(server.server_process.pid, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    run = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        server = Path(f"/proc/{int(run.stdout.readline())}")
        assert b"uvicorn" in (server / "cmdline").read_bytes()
        run.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel's parent-death signal is left
        run.wait(30)
        deadline = time.monotonic() + 30
        while alive(server):
            assert time.monotonic() < deadline, "the temporary server outlived its run"
            time.sleep(0.2)
    finally:
        run.kill()


def test_the_startup_wait_defaults_long_but_the_users_setting_wins():
    code = "import flows, os; print(os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    default = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert default.stdout.strip() == "180"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "7"
    mine = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert mine.stdout.strip() == "7"
