"""`mmedpo iterate`, 2 rounds on the tiny LLaVA: killed with SIGKILL inside round 2, re-run, re-run
again. Round 2's rejections are what round 1's trained model samples (on-policy), its set names
round 1's adapter, the resumed run reuses round 1 and the finished part of round 2, and the last
run computes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from flows.cli import main
from flows.iterate import iterate, round_config
from tasks import catalog
from tasks.config import (
    EvaluateConfig,
    HallucinateConfig,
    IngestConfig,
    IterateConfig,
    RunConfig,
    RunnerConfig,
    SourceConfig,
    TargetSamplingConfig,
)
from tasks.store import MANIFEST, ArtifactStore
from tasks.store.packed import finished_items
from tests.support.configs import small_train

REPO = Path(__file__).resolve().parents[2]
TRAIN, TEST = 4, 2
START_TIMEOUT_S = 600  # a loaded CI box takes long to import torch and start the flow


def data_root(root: Path) -> SourceConfig:
    root.mkdir()
    lines = []
    for i in range(TRAIN + TEST):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(root / f"{i}.png")
        record = {"id": f"q{i}", "image": f"{i}.png", "question": "Is there a lesion?", "boxes": [[5, 5, 25, 25]]}
        record |= {"answer": "yes" if i % 2 else "no", "split": "train" if i < TRAIN else "test"}
        lines.append(json.dumps(record))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=root / "data.jsonl")


def run_config(tmp_path: Path, model: Path) -> RunConfig:
    return RunConfig(
        name="onpolicy",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[data_root(tmp_path / "raw")]),
        # No LLM: the target model's first answer that passes the guard, the rules when none does.
        # Random weights answer anything: a loose length guard keeps their answers usable.
        hallucinate=HallucinateConfig(
            backend="target",
            min_length_ratio=0.01,
            max_length_ratio=100.0,
            target=TargetSamplingConfig(
                model_path=model, selector="first", fallback="rules", num_samples=2, max_new_tokens=5, batch_size=1
            ),
        ),
        train=small_train(learning_rate=1e-2, projector_lr=1e-3, warmup_ratio=0.0),
        evaluate=EvaluateConfig(max_new_tokens=4, meteor=False, examples=1),
        iterate=IterateConfig(rounds=2, train_from="previous"),
        # One sample per shard: round 2's rejections are published one by one, so the kill lands among them.
        runner=RunnerConfig(kind="threads", workers=1, shard_size=1),
    )


def item_count(store: Path, stage: str) -> int:
    return finished_items(store, stage)


def artifacts(store: Path) -> set[str]:
    return {f"{p.parent.name}/{p.name}" for p in store.glob("*/*") if (p / MANIFEST).is_file()}


def kill_inside_round_two(config: RunConfig, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH

    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    # The child reports to this session's server and keeps its results where this process looks
    # for them, so Prefect finds the cache records of what it finished.
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
    }
    log = tmp_path / "killed.log"
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "iterate", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    # Round 1 made TRAIN items; the first of round 2's (another sampled model) is one more.
    while item_count(config.store, "hallucinate") <= TRAIN:
        assert child.poll() is None, f"iterate ended before the kill:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "round 2 did not start within the start timeout"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL


def flow_tasks(flow_run_id) -> list[tuple[str, str, str]]:
    """(sub-flow run name, task name, state) for every task of every sub-flow, shards left out."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        found = []
        for child in children:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[child.id])))
            found += [(child.name, r.name.rsplit("-", 1)[0], r.state.name) for r in runs if "-shard" not in r.name]
    return found


STAGES = {"ingest", "localize", "noise", "hallucinate", "score", "assemble", "train", "evaluate"}


@pytest.mark.slow
def test_two_rounds_are_on_policy_resume_after_a_kill_and_rerun_as_cache_hits(
    tmp_path, prefect_harness, tiny_llava, capsys
):
    from models import vlm
    from tasks.hallucinate.target import generation_settings, sampling_model, usable_answers

    config = run_config(tmp_path, tiny_llava)
    kill_inside_round_two(config, tmp_path)
    store = ArtifactStore(config.store)
    assert len(store.list("train")) == 1 and len(store.list("hallucinate")) == 1  # round 1 only, finished
    done_before = item_count(config.store, "hallucinate") - TRAIN
    assert 1 <= done_before < TRAIN  # the kill landed inside round 2's sampling
    finished = {m.key: m.created for stage in ("assemble", "train", "evaluate") for m in store.list(stage)}

    resumed = iterate(config, return_state=True)
    result = resumed.result()
    first, second = result.rounds
    # Round 1 came from the store; round 2 reused the samples it had finished before the kill.
    states = flow_tasks(resumed.state_details.flow_run_id)
    assert {state for name, task, state in states if name.endswith("-r1") and task in STAGES} == {"Cached"}
    assert second.curated["hallucinate"].work == {"computed": TRAIN - done_before, "reused": done_before}
    assert {m.key: m.created for m in (first.curated["assemble"], first.train, first.evaluation.trained)}.items() <= (
        finished.items()
    )

    # On-policy: round 2's rejections are what round 1's trained model samples for each sample, with the
    # same seed; round 1's are the base model's.
    samples = {s["sample_id"]: s for s in catalog.rows(first.curated["ingest"], catalog.SAMPLES)}
    settings = round_config(config, 2, first.train).hallucinate
    assert settings.target.adapter == Path(first.train.path) / "adapter"
    for label, done, target in (("round 1", first, config.hallucinate.target), ("round 2", second, settings.target)):
        model = sampling_model(target)
        for row in catalog.rows(done.curated["hallucinate"], catalog.HALLUCINATIONS):
            sample = samples[row["sample_id"]]
            (again,) = vlm.generate(
                model, [sample["question"]], [sample["image_path"]], generation_settings(target, [sample])
            )
            assert row["candidates"] == again, (label, row["sample_id"])
            usable = usable_answers(sample, again, settings)
            if usable:  # the model's own first usable answer (else the rules' rewrite)
                assert (row["rejected"], row["origin"]) == (usable[0], "target_model"), (label, row["sample_id"])
    by_round = [
        {r["sample_id"]: r["candidates"] for r in catalog.rows(d.curated["hallucinate"], catalog.HALLUCINATIONS)}
        for d in (first, second)
    ]
    assert by_round[0].keys() == by_round[1].keys() and by_round[0] != by_round[1]  # a new model, new answers

    # Lineage: round 2's set names round 1's adapter (by content) and train artifact; its card says round 2.
    adapter_digest = store.digests.tree(Path(first.train.path) / "adapter")[:16]
    published = json.loads((config.sets / "onpolicy-r2" / second.curated["assemble"].digest / MANIFEST).read_text())
    assert f"source:target.adapter/{adapter_digest}" in published["lineage"]
    assert f"train/{first.train.key}" in published["lineage"]
    assert published["counts"]["policy.round"] == 2 and first.curated["assemble"].counts["policy.round"] == 1
    assert second.curated["hallucinate"].inputs["policy"] == first.train.key
    assert second.train.inputs["init"] == first.train.key and second.train.counts["train.steps"] == 2
    card = (config.sets / "onpolicy-r2" / second.curated["assemble"].digest / "CARD.md").read_text()
    assert f"adapter with content `{adapter_digest}` of train artifact `{first.train.key}`: round 2" in card

    # One table for every round, in the flow's return and as a Prefect table artifact.
    closed = next(r for r in result.comparison if r["metric"] == "closed_accuracy")
    assert closed["n"] == TEST and {"base", "round 1", "round 2", "change"} <= set(closed)
    trained = [json.loads(d.evaluation.trained.file("metrics.json").read_text()) for d in (first, second)]
    assert closed["round 2"] == round(100 * trained[1]["datasets"][closed["dataset"]]["closed_accuracy"], 2)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["iterate-comparison"]))
        )
    assert tables and any(a.flow_run_id == resumed.state_details.flow_run_id for a in tables)

    # `mmedpo sets show` shows the chain of rounds.
    assert main(["sets", "show", "onpolicy-r1", "--root", str(config.sets)]) == 0
    shown = capsys.readouterr().out
    assert "## Rounds" in shown and f"`{second.curated['assemble'].digest}`" in shown
    assert f"`{first.curated['assemble'].digest}` (this set)" in shown

    # A re-run computes nothing: every stage of both rounds is Cached, no artifact or set version is added.
    before, versions = artifacts(config.store), sorted(p.name for p in config.sets.glob("*/*"))
    again = iterate(config, return_state=True)
    states = flow_tasks(again.state_details.flow_run_id)
    stage_states = [(name, task, state) for name, task, state in states if task in STAGES]
    assert {name.rsplit("-", 1)[1] for name, _, _ in stage_states} == {"r1", "r2"}
    assert {state for _, _, state in stage_states} == {"Cached"}, stage_states
    assert artifacts(config.store) == before and sorted(p.name for p in config.sets.glob("*/*")) == versions
    assert again.result().comparison == result.comparison
