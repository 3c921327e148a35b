"""localize -> noise under a real Prefect server: k recomputes noise, localize stays cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect import flow

from tasks.config import IngestConfig, LocalizeConfig, NoiseConfig, SourceConfig
from tasks.ingest import ingest_task
from tasks.localize import localize_task
from tasks.noise import noise_task
from tests.support.harness import task_states


@flow(name="visual-pairs")
def visual_pairs(store: str, ingest_config: IngestConfig, localize_config: LocalizeConfig, noise_config: NoiseConfig):
    samples = ingest_task(store, ingest_config)
    regions = localize_task(store, localize_config, samples)
    return {"localize": regions, "noise": noise_task(store, noise_config, samples, regions)}


@pytest.mark.slow
def test_changing_k_recomputes_only_noise(tmp_path: Path, prefect_harness):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(raw / f"img{i}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"img{i}.png",
                    "question": "Lesion?",
                    "answer": "yes",
                    "boxes": [[4, 4, 30, 30]],
                }
            )
        )
    (raw / "data.jsonl").write_text("\n".join(lines) + "\n")
    ingest_config = IngestConfig(sources=[SourceConfig(format="jsonl", root=raw / "data.jsonl", name="small")])
    store = str(tmp_path / "store")

    first = visual_pairs(store, ingest_config, LocalizeConfig(), NoiseConfig())
    assert first["noise"].counts["images.noised"] == 2
    again = visual_pairs(store, ingest_config, LocalizeConfig(), NoiseConfig(), return_state=True)
    assert task_states(again.state_details.flow_run_id) | {"fingerprint-sources": None} == {
        "fingerprint-sources": None,
        "ingest": "Cached",
        "localize": "Cached",
        "noise": "Cached",
    }

    stronger = visual_pairs(store, ingest_config, LocalizeConfig(), NoiseConfig(k=800), return_state=True)
    states = task_states(stronger.state_details.flow_run_id)
    assert states["localize"] == "Cached" and states["noise"] == "Completed"
    result = stronger.result()
    assert result["localize"].key == first["localize"].key and result["noise"].key != first["noise"].key
