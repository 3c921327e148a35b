"""Every caller of an endpoint - the hallucinate llm backend, the target endpoint and endpoint
judges - sends through the worker process's one client of it: shards running at once (as the
thread runner runs them) stay within the endpoint's limit on one connection pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tasks.config import HallucinateConfig, JudgeConfig, ScoreConfig, TargetSamplingConfig
from tasks.hallucinate import hallucinate_items
from tasks.score import score_items
from tests.support.samples import sample_row, write_image

SHARDS, PER_SHARD, LIMIT = 4, 3, 2


def limited(server, **extra) -> dict:
    return {"base_url": server.base_url, "model": "m", "max_concurrency": LIMIT, "timeout_s": 5.0, **extra}


def shard_samples(tmp_path, shard: int) -> list[dict]:
    scan = write_image(tmp_path / "scan.png", np.zeros((16, 16), dtype=np.uint8))
    return [
        sample_row(f"s{shard}-{i}", scan, question=f"Is there an effusion {shard} {i}?", answer="Yes")
        | {"answer_type": "closed"}
        for i in range(PER_SHARD)
    ]


def llm_shard(server, tmp_path, shard):
    config = HallucinateConfig(backend="llm", llm=limited(server, max_retries=0), max_attempts=1)
    return hallucinate_items(config, str(tmp_path / "cache"), shard_samples(tmp_path, shard), [])


def target_shard(server, tmp_path, shard):
    config = HallucinateConfig(
        backend="target",
        target=TargetSamplingConfig(
            endpoint=limited(server, capabilities={"images": True}), selector="first", fallback="skip", num_samples=1
        ),
    )
    return hallucinate_items(config, str(tmp_path / "cache"), shard_samples(tmp_path, shard), [])


def judge_shard(server, tmp_path, shard):
    judge = JudgeConfig(name="j", kind="endpoint", protocol="json", endpoint=limited(server), parse_retries=0)
    config = ScoreConfig(judges=[judge], mode="mean")
    ok = {"status": "ok", "reason": None, "rejected": "No", "error_type": "yes_no_flip"}
    payloads = [({"sample_id": s["sample_id"], **ok}, s) for s in shard_samples(tmp_path, shard)]
    return score_items(config, str(tmp_path / "cache"), payloads, [])


@pytest.mark.parametrize("shard", [llm_shard, target_shard, judge_shard], ids=["llm", "target", "judge"])
def test_shards_of_every_endpoint_caller_share_the_process_client(openai_server, tmp_path, shard):
    openai_server.latency_s = 0.1
    with ThreadPoolExecutor(max_workers=SHARDS) as pool:
        list(pool.map(lambda s: shard(openai_server, tmp_path, s), range(SHARDS)))
    requests = openai_server.requests
    assert len(requests) >= SHARDS * PER_SHARD
    # Twelve requests at once from four shards: one client's limit keeps two in flight, on two connections.
    assert openai_server.max_concurrent == LIMIT
    assert len({request.peer for request in requests}) <= LIMIT
