"""Screenshot check of the Prefect UI: start a server, run the demo, photograph its flow runs.

    .venv/bin/python bench/ui_screenshot.py [--out bench]

Starts a throw-away Prefect server on 127.0.0.1 (its own PREFECT_HOME), runs `mmedpo demo`
against it in a scratch folder, then opens the `curate` flow run page
and its noise stage's image artifact in headless Chromium (Debian: apt-get install -y
chromium) and saves ``<out>/ui_curate_run.png`` and ``<out>/ui_curate_noise_grid.png``. Prints the run URLs and the
task runs the server recorded, so the pictures can be checked against them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from models.lifetime import free_port

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1600,1100",
    "--virtual-time-budget=20000",
]


def wait_healthy(api: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"prefect server at {api} not healthy after {timeout:.0f} s")


def screenshot(url: str, png: Path, profile: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: apt-get update && apt-get install -y chromium")
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}", url],
        check=True,
        capture_output=True,
        timeout=180,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mmedpo-ui-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(scratch / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONPATH": str(REPO),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(api, server)
        demo = scratch / "demo"
        demo.mkdir()
        subprocess.run([sys.executable, "-m", "flows.cli", "demo"], cwd=demo, env=env, check=True, timeout=900)

        os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": env["PREFECT_HOME"]})
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            (run,) = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["curate"])))
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        print(f"flow run {run.name} ({run.state.name}): {len(tasks)} task runs, {len(artifacts)} artifacts")
        for task in sorted(tasks, key=lambda t: t.expected_start_time or t.created):
            print(f"  {task.name:<28} {task.state.name}")
        args.out.mkdir(parents=True, exist_ok=True)
        grid = next(a for a in artifacts if a.key == "noise-grid")
        pages = (
            ("run", f"http://127.0.0.1:{port}/runs/flow-run/{run.id}"),
            ("noise_grid", f"http://127.0.0.1:{port}/artifacts/artifact/{grid.id}"),
        )
        for suffix, url in pages:
            png = args.out / f"ui_curate_{suffix}.png"
            screenshot(url, png, scratch / f"chromium-{suffix}")
            print(f"{url}\n  -> {png} ({png.stat().st_size} bytes)")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
