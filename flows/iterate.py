"""Flow `iterate`: on-policy rounds. `mmedpo iterate --config FILE.yaml [--rounds N]`.

    round 1:  curate (target samples the base model)           -> train (a new adapter)    -> evaluate
    round r:  curate (target samples base + round r-1 adapter) -> train (iterate.train_from) -> evaluate
    then:     one table - base and every round, per data set and metric - and the chain of rounds

Each step is the ordinary sub-flow (curate, train, evaluate) with the run file's sections,
changed only where a round must differ (``round_config``): the set is published as
``<name>-r<round>``, the target backend samples round r-1's adapter (``hallucinate.target.adapter``,
identified by content, so a round's keys hold the sampled model's digest; the train artifact is
the curation's ``policy`` input, so lineage names it), a window of new samples when
``iterate.samples_per_round`` is set, and training continues round r-1's adapter
(``train_from: previous``) or trains a new one on every round's set (``base``). Every stage is
keyed by content, so re-running ``iterate`` computes nothing, a killed one resumes at the first
unfinished stage, and asking for more rounds runs only the new ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, task
from pydantic import BaseModel, ConfigDict

from flows.curate import curate
from flows.evaluate import Evaluation, evaluate_after_training
from flows.train import train_on_gpu_pool
from models.training import ADAPTER
from tasks import ui
from tasks.config import ConfigError, RunConfig, SampleWindow, load_run_config
from tasks.config.iterate import check_iterate
from tasks.evaluate import load_metrics
from tasks.evaluate.comparison import rounds_rows, rounds_text
from tasks.rounds import chain, chain_markdown
from tasks.store import ArtifactStore, Manifest


class RoundResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    round: int
    name: str  # the set's published name, <name>-r<round>
    curated: dict[str, Manifest]
    train: Manifest
    evaluation: Evaluation


class IterateResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    rounds: list[RoundResult]
    comparison: list[dict[str, Any]]


@flow(name="iterate", flow_run_name="iterate-{config.name}")
def iterate(config: RunConfig, rounds: int | None = None) -> IterateResult:
    """``rounds`` overrides ``iterate.rounds``."""
    check_iterate(config)
    count = rounds if rounds is not None else config.iterate.rounds
    done: list[RoundResult] = []
    policy: Manifest | None = None
    for number in range(1, count + 1):
        settings = round_config(config, number, policy)
        curated = curate(settings, policy)
        sets = [curated["assemble"]]
        if config.iterate.train_from == "base":
            sets += [d.curated["assemble"] for d in done]
        init = policy if config.iterate.train_from == "previous" else None
        trained = train_on_gpu_pool(settings, [s.key for s in sets], init=init)
        evaluation = evaluate_after_training(settings, trained, curated["ingest"])
        done.append(
            RoundResult(round=number, name=settings.name, curated=curated, train=trained, evaluation=evaluation)
        )
        policy = trained
    return IterateResult(rounds=done, comparison=summary_task(str(config.store), done))


def round_config(config: RunConfig, number: int, policy: Manifest | None) -> RunConfig:
    """The run config of round ``number``: the run file's, with what the round changes."""
    plan = config.iterate
    window = None
    if plan.samples_per_round is not None:
        size = plan.samples_per_round
        window = SampleWindow(splits=list(plan.splits), start=(number - 1) * size, count=size, seed=plan.seed)
    adapter = Path(policy.path) / ADAPTER if policy is not None else None
    sampled: dict[str, Any] = {"adapter": adapter}
    endpoint = config.hallucinate.target.endpoint
    if endpoint is not None and policy is not None:
        # The server holds the model: round r's adapter by the name it is served under (check_iterate: one is set).
        model = str(plan.endpoint_model).format(round=number - 1)
        sampled["endpoint"] = endpoint.model_copy(update={"model": model})
    target = config.hallucinate.target.model_copy(update=sampled)
    hallucinate = config.hallucinate.model_copy(
        update={"splits": list(plan.splits), "window": window, "target": target}
    )
    return config.model_copy(
        update={
            "name": f"{config.name}-r{number}",
            "hallucinate": hallucinate,
            "assemble": config.assemble.model_copy(update={"window": window}),
            "train": config.train.model_copy(update={"model": config.hallucinate.target.model_path}),
        }
    )


@task(name="iterate-summary")
def summary_task(store_root: str, rounds: list[RoundResult]) -> list[dict[str, Any]]:
    """Every round's evaluation in one table, and the chain of rounds, as Prefect artifacts."""
    if not rounds:
        return []
    rows = rounds_rows(
        load_metrics(rounds[0].evaluation.base),
        [load_metrics(r.evaluation.trained) for r in rounds if r.evaluation.trained],
    )
    ui.table("iterate-comparison", rows, f"Base model and rounds 1-{len(rounds)} per data set and metric (%)")
    last = rounds[-1].curated["assemble"]
    links = chain(ArtifactStore(store_root), last)
    names = "\n".join(f"- round {r.round}: set `{r.name}@{r.curated['assemble'].digest}`" for r in rounds)
    ui.markdown("iterate-rounds", f"{chain_markdown(links, last.digest)}\n\n{names}\n", "The chain of rounds")
    return rows


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "iterate",
        help="on-policy rounds: curate from the model just trained, train, evaluate; one table for all rounds",
        description="Round r curates with the target backend sampling round r-1's model (round 1: the base), "
        "trains and evaluates; the iterate: section of the run file says how. A re-run reuses finished rounds.",
    )
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument("--rounds", type=int, help="rounds to run (default: iterate.rounds)")
    parser.set_defaults(handler=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    config = load_run_config(args.config)
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds: must be at least 1, got {args.rounds}")
    check_iterate(config, origin=str(args.config))
    result = iterate(config, args.rounds)
    for done in result.rounds:
        assembled = done.curated["assemble"]
        print(
            f"round {done.round}: set {done.name}@{assembled.digest} ({assembled.counts.get('pairs.built', 0):g} pairs)"
            f"  adapter {Path(done.train.path) / ADAPTER}"
        )
    print(f"\n{rounds_text(result.comparison)}")
    print(f"\ninspect: mmedpo sets show {result.rounds[-1].name} --root {config.sets}")
    return 0
