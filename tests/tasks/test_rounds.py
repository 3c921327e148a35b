"""Who wrote a set's rejections and the chain of rounds, read from manifests alone."""

from __future__ import annotations

from pathlib import Path

from tasks.config import HallucinateConfig, StageConfig, TargetSamplingConfig
from tasks.rounds import chain, chain_markdown, rejection_source
from tasks.store import ArtifactStore, Manifest
from tests.support.samples import ingest_manifest, sample_row


class Fixture(StageConfig):
    tag: str = ""


def nothing(out: Path) -> dict[str, float]:
    (out / "rows.txt").write_text(out.name)
    return {}


def target_config(model: Path, adapter: Path | None = None) -> HallucinateConfig:
    return HallucinateConfig(
        backend="target", target=TargetSamplingConfig(model_path=model, adapter=adapter, selector="first")
    )


def rounds(tmp_path: Path, count: int) -> tuple[ArtifactStore, list[Manifest], list[Manifest], list[Manifest]]:
    """``count`` rounds of fixture artifacts wired as `mmedpo iterate` wires them."""
    store = ArtifactStore(tmp_path / "store")
    model = tmp_path / "base"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ingest = ingest_manifest(store, [sample_row("s", tmp_path / "none.png")])
    hallucinations, sets, trains = [], [], []
    policy: Manifest | None = None
    for r in range(1, count + 1):
        adapter = Path(policy.path) / "adapter" if policy else None
        inputs = {"ingest": ingest} | ({"policy": policy} if policy else {})
        hallucinations.append(store.run("hallucinate", "c", target_config(model, adapter), inputs, nothing))
        sets.append(store.run("assemble", "c", Fixture(tag=str(r)), {"hallucinate": hallucinations[-1]}, nothing))

        def adapter_files(out: Path, r: int = r) -> dict[str, float]:
            (out / "adapter").mkdir()
            (out / "adapter" / "adapter_config.json").write_text(f'{{"round": {r}}}')
            return {}

        train_inputs = {"assemble": sets[-1]} | ({"init": policy} if policy else {})
        policy = store.run("train", "c", Fixture(tag=str(r)), train_inputs, adapter_files)
        trains.append(policy)
    return store, hallucinations, sets, trains


def test_the_round_and_the_sampled_model_follow_from_lineage(tmp_path):
    store, hallucinations, _, trains = rounds(tmp_path, 3)
    first, second, third = (rejection_source(h) for h in hallucinations)
    model_digest = store.digests.tree(tmp_path / "base")[:16]
    assert (first.round, first.model, first.adapter, first.policy) == (1, model_digest, None, None)
    adapter_digest = store.digests.tree(Path(trains[0].path) / "adapter")[:16]
    assert (second.round, second.adapter, second.policy) == (2, adapter_digest, trains[0].key)
    assert (third.round, third.policy) == (3, trains[1].key)
    assert f"train artifact `{trains[0].key}`" in second.sentence() and "round 2" in second.sentence()

    # An adapter given without its train artifact: the model is named, the round is not guessed.
    loose = store.run(
        "hallucinate",
        "c",
        target_config(tmp_path / "base", Path(trains[0].path) / "adapter"),
        {"ingest": hallucinations[0]},
        nothing,
    )
    source = rejection_source(loose)
    assert source.round is None and source.adapter == adapter_digest and "round unknown" in source.sentence()
    assert rejection_source(store.run("hallucinate", "c", HallucinateConfig(), {}, nothing)).sentence() == (
        "Written by the `rules` backend (seed 0)."
    )


def test_the_chain_runs_back_and_forward_from_any_round(tmp_path):
    store, _, sets, trains = rounds(tmp_path, 3)
    for middle in (sets[0], sets[1], sets[2]):
        links = chain(store, middle)
        assert [link.set_key for link in links] == [s.key for s in sets]
        assert [link.source.round for link in links] == [1, 2, 3]
        assert [link.trained for link in links] == [(t.key,) for t in trains]
    table = chain_markdown(chain(store, sets[1]), current=sets[1].digest)
    assert f"`{sets[1].digest}` (this set)" in table and table.count("(this set)") == 1
    assert f"(`{trains[0].key}`)" in table and "base model" in table
