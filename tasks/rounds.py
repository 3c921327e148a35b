"""Which model wrote a preference set's rejections, and the chain of `mmedpo iterate` rounds.

Everything here is read from manifests, never from labels: a set's rejections come from its
hallucinate artifact, whose inputs name the sampled model's content digest
(``target.model_path``), the adapter's (``target.adapter``) and the train artifact that adapter
belongs to (``policy``). A set's *round* is one more than the number of train artifacts behind
its policy (round 1 samples the base model; round r samples the model after r - 1 rounds of
DPO), so it follows from lineage alone. The chain walks from a set to the train artifact its
rejections were sampled from, to the set that train artifact learnt from, and so on; and
forward, from a set to the round that sampled the model trained on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from tasks.store import ArtifactStore, Manifest


@dataclass(frozen=True)
class RejectionSource:
    """Who wrote a set's rejections."""

    backend: str
    model: str | None = None  # content digest of the sampled model (target backend)
    adapter: str | None = None  # content digest of the adapter merged into it
    policy: str | None = None  # key of the train artifact the adapter belongs to
    round: int | None = None  # None: an adapter not traced to a train artifact
    detail: str = ""  # rules seed / endpoint model / selector and fallback

    def sentence(self) -> str:
        """One line for the data card (digests and keys only: a set's content never holds paths)."""
        if self.backend != "target":
            return f"Written by the `{self.backend}` backend ({self.detail})."
        sampled = f"the model with content `{self.model}`"
        if self.adapter is not None:
            sampled += f" + the adapter with content `{self.adapter}`"
            sampled += f" of train artifact `{self.policy}`" if self.policy else " (not traced to a train artifact)"
        when = (
            f"round {self.round} (the policy after {self.round - 1} round(s) of DPO)"
            if self.round is not None
            else "round unknown"
        )
        return f"Sampled by the `target` backend ({self.detail}) from {sampled}: {when}."


def rejection_source(hallucinate: Manifest) -> RejectionSource:
    """Who wrote the rejections of a hallucinate artifact, from its config, inputs and lineage."""
    config = hallucinate.config
    backend = str(config.get("backend", "rules"))
    if backend == "rules":
        return RejectionSource(backend, detail=f"seed {config.get('seed', 0)}")
    if backend == "llm":
        return RejectionSource(backend, detail=f"endpoint model `{config.get('llm', {}).get('model')}`")
    target = config.get("target", {})
    detail = f"selector {target.get('selector', 'llm')}, fallback {target.get('fallback', 'llm')}"
    digests = hallucinate.input_digests or hallucinate.inputs
    policy = hallucinate.inputs.get("policy")
    adapter = digests.get("target.adapter")
    trained = {entry for entry in hallucinate.lineage if entry.startswith("train/")}
    known = adapter is None or policy is not None
    return RejectionSource(
        backend,
        model=digests.get("target.model_path"),
        adapter=adapter,
        policy=policy,
        round=1 + len(trained) if known else None,
        detail=detail,
    )


def origin_table(pairs: pa.Table, hallucinations: pa.Table) -> str:
    """Text pairs per origin of their rejection (target_model: the sampled model's own answer);
    ``hallucinations``: the sample_id and origin columns of the set's HALLUCINATIONS."""
    ids = pairs.filter(pc.equal(pairs.column("pair_type"), "text")).column("sample_id")
    at = pc.index_in(ids, value_set=hallucinations.column("sample_id"))
    counted: Counter[str] = Counter()
    for origin, n in zip(*pc.value_counts(pc.fill_null(hallucinations.column("origin").take(at), "")).flatten()):
        counted[origin.as_py() or "unknown"] += n.as_py()
    lines = ["| origin of the rejection | text pairs |", "|---|---:|"]
    return "\n".join(lines + [f"| {origin} | {n} |" for origin, n in sorted(counted.items())])


# --- the chain of rounds -------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One round: its set, who wrote its rejections, and the train artifacts that learnt from it."""

    set_key: str  # the assemble artifact
    version: str  # the set's version (content digest)
    source: RejectionSource
    trained: tuple[str, ...]  # train artifacts whose newest set this is


def store_of(set_manifest: Manifest) -> ArtifactStore:
    """The store an assemble manifest (or a published copy of it) was built in."""
    return ArtifactStore(Path(set_manifest.path).parent.parent)


def chain(store: ArtifactStore, assembled: Manifest) -> list[Link]:
    """The rounds ``assembled`` belongs to, oldest first: back through the policies its rejections
    were sampled from, then forward through rounds that sampled a model trained on it (the newest
    one where several did)."""
    trains = store.list("train")
    hallucinations = store.list("hallucinate")
    sets = store.list("assemble")
    back: list[Link] = []
    current: Manifest | None = assembled
    while current is not None and len(back) < 1000:
        link = _link(store, current, trains)
        back.append(link)
        policy = store.peek("train", link.source.policy) if link.source.policy else None
        current = store.peek("assemble", policy.inputs["assemble"]) if policy and "assemble" in policy.inputs else None
    links = back[::-1]
    while links[-1].trained and len(links) < 1000:
        sampled = {h.key for h in hallucinations if h.inputs.get("policy") in links[-1].trained}
        following = [s for s in sets if s.inputs.get("hallucinate") in sampled]
        if not following:
            break
        links.append(_link(store, following[-1], trains))
    return links


def _link(store: ArtifactStore, assembled: Manifest, trains: Sequence[Manifest]) -> Link:
    hallucinate = store.peek("hallucinate", assembled.inputs.get("hallucinate", ""))
    source = rejection_source(hallucinate) if hallucinate is not None else RejectionSource("unknown")
    trained = tuple(t.key for t in trains if t.inputs.get("assemble") == assembled.key)
    return Link(assembled.key, assembled.digest, source, trained)


def chain_markdown(links: Sequence[Link], current: str | None = None) -> str:
    """The rounds as a table; ``current`` (a set version) is marked."""
    lines = [
        "| round | set version | rejections sampled from | adapter (train artifact) | trained on it |",
        "|---:|---|---|---|---|",
    ]
    for link in links:
        source = link.source
        sampled = f"model `{source.model}`" if source.model else f"`{source.backend}` backend"
        adapter = f"`{source.adapter}` (`{source.policy}`)" if source.adapter else "base model"
        mark = " (this set)" if link.version == current else ""
        rnd = "?" if source.round is None else str(source.round)
        trained = ", ".join(f"`{key}`" for key in link.trained) or "-"
        lines.append(f"| {rnd} | `{link.version}`{mark} | {sampled} | {adapter} | {trained} |")
    return "\n".join(lines)
