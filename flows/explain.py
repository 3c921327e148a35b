"""`mmedpo explain --config F`: stage by stage, would a run be a cache hit, and if not, why.

No stage runs: each key is computed as the store would (config identity, code version, the
content digests of the inputs). A stage whose upstream is a miss cannot be known before that
upstream has run (its output may come out identical - early cutoff), and says so. For a miss,
the newest artifact of the same stage is the comparison: which config fields, inputs or code
changed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flows.dag import DAG
from tasks import evaluate, sft, train
from tasks.config import RunConfig, load_run_config
from tasks.store import ArtifactStore, Keyed, Manifest
from tasks.store.manifest import config_identity, identity_of


@dataclass(frozen=True)
class Verdict:
    stage: str
    status: str  # hit | miss | unknown
    key: str | None
    why: str


def explain(config: RunConfig) -> list[Verdict]:
    store = ArtifactStore(config.store)
    found: dict[str, Manifest | None] = {}
    verdicts = []
    for step in DAG:
        settings = step.settings(config)
        if settings is None:
            continue
        verdict, found[step.name] = judge(store, step.name, step.code, settings, step.inputs, found)
        verdicts.append(verdict)
    assembled, tuned = found.get("assemble"), found.get("sft")
    train_config = config.train if tuned is None else config.train.model_copy(update={"model": sft.model_dir(tuned)})
    if assembled is None or (config.sft is not None and tuned is None):
        verdicts.append(Verdict("train", "unknown", None, "waits for its preference set (and sft) to exist"))
        return verdicts
    inputs = train.train_inputs(assembled, tuned)
    verdict, trained = judge_with(store, train.STAGE, train.CODE, train_config, inputs)
    verdicts.append(verdict)
    if trained is None:
        verdicts.append(Verdict("evaluate", "unknown", None, "waits for the adapter to be trained"))
        return verdicts
    settings = evaluate.resolve_model(config.evaluate, trained)
    for label, given in (
        ("base", {"ingest": found["ingest"]}),
        ("trained", {"ingest": found["ingest"], "train": trained}),
    ):
        verdict, _ = judge_with(store, evaluate.STAGE, evaluate.CODE, settings, given)
        verdicts.append(Verdict(f"evaluate ({label})", verdict.status, verdict.key, verdict.why))
    return verdicts


def judge(
    store: ArtifactStore, stage: str, code: str, config: BaseModel, upstream: tuple[str, ...], found: Mapping[str, Any]
) -> tuple[Verdict, Manifest | None]:
    missing = [name for name in upstream if found.get(name) is None]
    if missing:
        why = f"waits for {', '.join(missing)} (whose output may come out the same: early cutoff)"
        return Verdict(stage, "unknown", None, why), None
    return judge_with(store, stage, code, config, {name: found[name] for name in upstream})


def judge_with(
    store: ArtifactStore, stage: str, code: str, config: BaseModel, inputs: Mapping[str, Keyed]
) -> tuple[Verdict, Manifest | None]:
    key, every = store.key(stage, code, config, inputs)
    hit = store.get(stage, key)
    if hit is not None:
        return Verdict(stage, "hit", key, f"built {hit.created}"), hit
    previous = store.list(stage)
    if not previous:
        return Verdict(stage, "miss", key, "never built in this store"), None
    why = differences(previous[-1], type(config), config, code, every)
    return Verdict(stage, "miss", key, why), None


def differences(
    previous: Manifest, model: type[BaseModel], config: BaseModel, code: str, inputs: Mapping[str, Keyed]
) -> str:
    """What differs from ``previous`` (the stage's newest artifact): config fields, inputs, code."""
    before = flatten(config_identity(model.model_validate(previous.config)))
    now = flatten(config_identity(config))
    changed = [
        f"config {name}: {before.get(name)!r} -> {now.get(name)!r}"
        for name in sorted(set(before) | set(now))
        if before.get(name) != now.get(name)
    ]
    digests = {name: identity_of(item) for name, item in inputs.items()}
    for name in sorted(set(previous.input_digests) | set(digests)):
        if previous.input_digests.get(name) != digests.get(name):
            changed.append(f"input {name} changed")
    if previous.code_version != code:
        changed.append(f"code {previous.code_version} -> {code}")
    return f"vs {previous.key}: " + ("; ".join(changed) or "inputs from before content digests")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, item in value.items():
            out.update(flatten(item, f"{prefix}.{name}" if prefix else str(name)))
        return out
    return {prefix: value}


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explain", help="stage by stage: would a run be a cache hit, and if not, why")
    parser.add_argument("--config", required=True, type=Path, help="run config YAML")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    verdicts = explain(load_run_config(args.config))
    width = max(len(v.stage) for v in verdicts)
    for v in verdicts:
        print(f"{v.stage:<{width}}  {v.status:<7}  {v.key or '-':<16}  {v.why}")
    return 0
