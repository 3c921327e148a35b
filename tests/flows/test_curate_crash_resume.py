"""`mmedpo curate` killed with SIGKILL in the middle of a per-sample stage, then re-run: the
finished samples are reused (counted), nothing partial is ever visible in the store, and the
set version equals the one an uninterrupted run produces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from flows.curate import curate
from tasks.config import IngestConfig, RunConfig, RunnerConfig, SourceConfig
from tasks.store import MANIFEST
from tasks.store.packed import finished_items

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 40
START_TIMEOUT_S = 600  # a loaded CI box takes long to import torch and start the flow


def data_root(root: Path) -> SourceConfig:
    root.mkdir()
    lines = []
    for i in range(SAMPLES):
        # Large enough that noising one image takes a moment, so the kill lands mid-stage.
        pixels = np.random.default_rng(i).integers(0, 256, (640, 640), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"{i}.png",
                    "question": "Is there a lesion?",
                    "answer": "yes" if i % 2 else "no",
                    "boxes": [[40, 40, 600, 600]],
                }
            )
        )
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=root / "data.jsonl", name="crash")


def visible_state_is_complete(store: Path) -> None:
    """Every artifact folder has its manifest, every packed rows file reads whole: partial work
    hides in dot-named temporary folders only."""
    for stage_dir in (p for p in store.iterdir() if not p.name.startswith(".")):
        for artifact in stage_dir.iterdir():
            if not artifact.name.startswith("."):
                assert (artifact / MANIFEST).is_file(), artifact
        for rows in (stage_dir / ".items" / "rows").glob("*.parquet"):
            assert pq.read_table(rows).num_rows > 0, rows


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_reuses_finished_samples(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    source = data_root(tmp_path / "raw")
    # One sample per shard, one worker: items are published one by one, in order.
    runner = RunnerConfig(kind="threads", workers=1, shard_size=1)
    config = RunConfig(
        name="crash",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[source]),
        runner=runner,
    )
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    log = tmp_path / "killed.log"
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "curate", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while finished_items(config.store, "noise") < 3:
        assert child.poll() is None, f"curation ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "noising did not start within the start timeout"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    done = finished_items(config.store, "noise")
    assert 3 <= done < SAMPLES, done  # killed in the middle of the noise stage
    assert not any(p.name[0] != "." for p in (config.store / "noise").iterdir())  # no noise artifact published
    visible_state_is_complete(config.store)
    finished_stages = {p.parent.name: p.name for p in config.store.glob("*/*") if (p / MANIFEST).is_file()}
    assert {"ingest", "localize"} <= set(finished_stages)

    abandoned = list(config.store.rglob(".tmp-*"))
    assert abandoned  # the killed run was writing when it died

    resumed = curate(config)
    assert resumed["noise"].work == {"computed": SAMPLES - done, "reused": done}
    assert list(config.store.rglob(".tmp-*")) == []  # what the dead process left is swept away
    # Stages that finished before the kill are not run again: the re-run gets their artifacts.
    assert resumed["ingest"].key == finished_stages["ingest"] and resumed["localize"].key == finished_stages["localize"]
    visible_state_is_complete(config.store)

    uninterrupted = curate(config.model_copy(update={"store": tmp_path / "store2", "sets": tmp_path / "sets2"}))
    assert resumed["assemble"].key == uninterrupted["assemble"].key
    assert resumed["assemble"].counts == uninterrupted["assemble"].counts
