"""`mmedpo iterate` with the target sampled through a server (vLLM serving LoRA adapters): each round
after the first asks for the previous round's adapter by the name the server serves it under, and
a server that does not serve it stops the round with the command that loads it (no flow runs here:
each round's settings go through the stages as the flow passes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.iterate import round_config
from tasks.config import ConfigError, StageConfig, load_run_config
from tasks.config.iterate import check_iterate
from tasks.hallucinate import hallucinate
from tasks.store import ArtifactStore, content_hash
from tests.support.openai_server import Reply
from tests.support.samples import ingest_manifest, sample_row, write_image


def run_file(tmp_path: Path, server, **iterate):
    endpoint = {"base_url": server.base_url, "model": "llava-med", "capabilities": {"images": True}}
    target = {"endpoint": endpoint, "selector": "first", "fallback": "skip", "num_samples": 1}
    raw = {
        "name": "it",
        "store": str(tmp_path / "store"),
        "sets": str(tmp_path / "sets"),
        "hallucinate": {"backend": "target", "target": target},
        "iterate": iterate,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_run_config(path)


def trained(store: ArtifactStore, weights: bytes):
    """A train artifact holding an adapter (the server holds the model: its bytes only name it)."""

    def build(out: Path) -> dict[str, float]:
        (out / "adapter").mkdir()
        (out / "adapter" / "adapter_model.safetensors").write_bytes(weights)
        return {}

    return store.run("train", content_hash(weights.hex()), StageConfig(), {}, build)


def test_a_served_target_needs_a_model_name_per_round(tmp_path, openai_server):
    with pytest.raises(ConfigError, match=r"iterate.endpoint_model: unset, .*--lora-modules mmedpo-r1=<adapter>"):
        check_iterate(run_file(tmp_path, openai_server))
    check_iterate(run_file(tmp_path, openai_server, endpoint_model="mmedpo-r{round}"))
    with pytest.raises(ConfigError, match="names one model for every round: put {round} in it"):
        run_file(tmp_path, openai_server, endpoint_model="mmedpo-lora")
    with pytest.raises(ConfigError, match="only {round} may be filled in"):
        run_file(tmp_path, openai_server, endpoint_model="mmedpo-{round}-{adapter}")


def test_round_two_samples_round_ones_adapter_by_its_served_name(tmp_path, openai_server):
    openai_server.set_responder(lambda request: Reply(choices=["No."]))
    config = run_file(tmp_path, openai_server, endpoint_model="mmedpo-r{round}")
    store = ArtifactStore(config.store)
    scan = write_image(tmp_path / "scan.png", np.zeros((16, 16), dtype=np.uint8))
    rows = [sample_row(f"s{i}", scan, question=f"Effusion {i}?", answer="Yes", answer_type="closed") for i in (0, 1)]
    ingest = ingest_manifest(store, rows)
    policy = trained(store, b"round 1 weights")

    first, second = round_config(config, 1, None), round_config(config, 2, policy)
    hallucinate(store, first.hallucinate, ingest)
    assert [r.body["model"] for r in openai_server.requests] == ["llava-med"] * 2  # round 1: the base model

    # The server does not serve round 1's adapter yet: the round stops with the commands that load it.
    openai_server.reset()
    with pytest.raises(ConfigError) as refused:
        hallucinate(store, second.hallucinate, ingest, policy)
    adapter = Path(policy.path) / "adapter"
    assert "does not serve 'mmedpo-r1', the adapter" in str(refused.value)
    assert f"--lora-modules mmedpo-r1={adapter}" in str(refused.value)
    assert f'"lora_path": "{adapter}"' in str(refused.value)
    assert [r.body.get("model") for r in openai_server.requests if r.body] == []  # nothing sampled

    openai_server.serve_models("llava-med", "mmedpo-r1")
    openai_server.reset()
    made = hallucinate(store, second.hallucinate, ingest, policy)
    assert [r.body["model"] for r in openai_server.requests] == ["mmedpo-r1"] * 2
    assert made.inputs["policy"] == policy.key

    # A re-run after the server moved on to a later round's adapter reuses round 2's answers: the
    # old adapter need not be served, and nothing is asked.
    openai_server.serve_models("llava-med", "mmedpo-r2")
    openai_server.reset()
    assert hallucinate(store, second.hallucinate, ingest, policy).key == made.key
    assert openai_server.requests == []

    # Another run registers other weights under the same name: its answers are asked for again,
    # never taken from the response cache of the first.
    openai_server.serve_models("llava-med", "mmedpo-r1")
    openai_server.reset()
    other = trained(store, b"other weights")
    hallucinate(store, round_config(config, 2, other).hallucinate, ingest, other)
    assert [r.body["model"] for r in openai_server.requests] == ["mmedpo-r1"] * 2
