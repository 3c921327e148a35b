"""Finding artifacts already in the store: by key, the newest of a stage, or through lineage."""

from __future__ import annotations

from tasks.store.artifacts import ArtifactStore
from tasks.store.manifest import Manifest


class ArtifactMissing(LookupError):
    """A key that names no artifact of its stage (a user error: the message names both)."""


def find_artifact(store: ArtifactStore, stage: str, key: str | None) -> Manifest | None:
    """The artifact with ``key``, or the newest of its stage when no key is given."""
    if key is not None:
        found = store.get(stage, key)
        if found is None:
            raise ArtifactMissing(f"no {stage} artifact {key!r} in {store.root}")
        return found
    existing = store.list(stage)
    return existing[-1] if existing else None


def upstream_artifact(store: ArtifactStore, manifest: Manifest, stage: str) -> Manifest | None:
    """The one ``stage`` artifact in ``manifest``'s lineage (e.g. the ingest a train run's
    preference set was curated from); None when there is none or several."""
    keys = sorted({entry.split("/", 1)[1] for entry in manifest.lineage if entry.startswith(f"{stage}/")})
    found = [m for m in (store.get(stage, key) for key in keys) if m is not None]
    return found[0] if len(keys) == 1 and found else None


def trained_and_samples(
    store: ArtifactStore, train: str | None, ingest: str | None, base_only: bool = False
) -> tuple[Manifest | None, Manifest | None]:
    """What an evaluation runs on: the train artifact ``train`` names (the newest without a key,
    none with ``base_only``) and the ingest ``ingest`` names - without a key, the one the train
    artifact's preference set came from, else the newest; None where the store has none."""
    trained = None if base_only else find_artifact(store, "train", train)
    samples = find_artifact(store, "ingest", ingest)
    if ingest is None and trained is not None:
        samples = upstream_artifact(store, trained, "ingest") or samples
    return trained, samples
