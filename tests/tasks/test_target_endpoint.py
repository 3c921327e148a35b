"""hallucinate.target.endpoint: the target model's answers sampled through an OpenAI-compatible
VLM server (the project's test server, speaking vLLM's protocol: n choices per request, or one
choice as `transformers serve` answers)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import catalog
from tasks.config import HallucinateConfig, TargetSamplingConfig
from tasks.hallucinate import hallucinate
from tasks.store import ArtifactStore
from tests.support.openai_server import Reply
from tests.support.samples import ingest_manifest, sample_row, write_image


def served(server, tmp_path, **target):
    return HallucinateConfig(
        backend="target",
        llm={"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout_s": 1},
        cache_dir=tmp_path / "cache",
        target=TargetSamplingConfig(
            endpoint={"base_url": server.base_url, "model": "llava-med", "capabilities": {"images": True}},
            selector="first",
            fallback="skip",
            num_samples=3,
            **target,
        ),
    )


def closed_samples(tmp_path, count=2):
    scan = write_image(tmp_path / "scan.png", np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
    return [
        sample_row(
            f"s{i}",
            scan,
            dataset="test",
            split="train",
            question="Is there an effusion?",
            answer="Yes",
            answer_type="closed",
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("per_request", [3, 1])  # vLLM answers n at once; transformers serve one per request
def test_target_answers_are_sampled_from_the_served_vlm_with_the_image(openai_server, tmp_path, per_request):
    openai_server.set_responder(lambda request: Reply(choices=["Yes.", "No, none.", "Yes, small."][:per_request]))
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(store, closed_samples(tmp_path))
    manifest = hallucinate(store, served(openai_server, tmp_path, temperature=0.7, top_p=0.9), ingest)
    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.HALLUCINATIONS)}
    expected = ["Yes.", "No, none.", "Yes, small."] if per_request == 3 else ["Yes."] * 3
    assert [rows[s]["candidates"] for s in ("s0", "s1")] == [expected, expected]
    if per_request == 3:
        assert (rows["s0"]["rejected"], rows["s0"]["origin"]) == ("No", "target_model")
    else:
        assert rows["s0"]["status"] == "skipped"  # every answer equals the ground truth
    requests = openai_server.requests
    assert len(requests) == 2 * (3 // per_request)
    first = requests[0].body
    assert first["model"] == "llava-med" and first["n"] == 3 and first["temperature"] == 0.7 and first["top_p"] == 0.9
    image = [part for part in first["messages"][0]["content"] if part["type"] == "image_url"]
    assert len(image) == 1 and image[0]["image_url"]["url"].startswith("data:image/png;base64,")
    # Topping up after a one-choice reply asks for the rest with the next seed.
    if per_request == 1:
        seeds = sorted(r.body["seed"] for r in requests if r.prompt_text == requests[0].prompt_text)
        assert len(set(seeds)) == len(seeds)


def test_a_target_endpoint_must_read_images_and_be_allowed_them(openai_server, tmp_path):
    with pytest.raises(ValueError, match="capabilities.images"):
        HallucinateConfig(backend="target", target=TargetSamplingConfig(endpoint={"base_url": openai_server.base_url}))
    with pytest.raises(ValueError, match="allow_images"):
        HallucinateConfig(
            backend="target",
            target=TargetSamplingConfig(
                endpoint={"base_url": "https://vlm.example.com/v1", "capabilities": {"images": True}}
            ),
        )
    with pytest.raises(ValueError, match="one of target.model_path and target.endpoint"):
        HallucinateConfig(
            backend="target",
            target=TargetSamplingConfig(
                model_path=tmp_path, endpoint={"base_url": openai_server.base_url, "capabilities": {"images": True}}
            ),
        )


@pytest.mark.slow
def test_a_real_transformers_serve_of_a_tiny_vlm_answers_with_the_image(tmp_path, tiny_llava):
    """The run starts `transformers serve` on the tiny LLaVA folder: it reads the image part and
    gives one choice per request (it ignores n), so each sample's answers come from topped-up requests."""
    rows = closed_samples(tmp_path, count=2)
    config = HallucinateConfig(
        backend="target",
        llm={"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout_s": 1},
        cache_dir=tmp_path / "cache",
        target=TargetSamplingConfig(
            endpoint={"serve": {"model": tiny_llava}, "capabilities": {"images": True}, "timeout_s": 120},
            selector="first",
            fallback="rules",
            num_samples=2,
            max_new_tokens=4,
        ),
    )
    store = ArtifactStore(tmp_path / "store")
    manifest = hallucinate(store, config, ingest_manifest(store, rows))
    out = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.HALLUCINATIONS)}
    assert all(len(out[s]["candidates"]) == 2 for s in ("s0", "s1"))
    assert all(isinstance(c, str) for s in ("s0", "s1") for c in out[s]["candidates"])
    assert {out[s]["status"] for s in ("s0", "s1")} == {"ok"}  # the model's answer, or the rules' flip
