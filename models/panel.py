"""A panel of judges and the protocols that combine it: the paper's sequential debate, or
independent scores averaged."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import get_args

from models.judges import (
    EndpointJudge,
    Judge,
    JudgeFailure,
    JudgeItem,
    Outcome,
    TransformersJudge,
    Turn,
    Verdict,
    prompt_templates,
)
from models.llm import LLMClient
from models.registry import bind
from models.rules_judge import RulesJudge
from models.settings import JudgeKind, JudgeSettings
from models.token_judges import EndpointReader, LogitReader, TokenJudge, held_scorer


async def debate(panel: Sequence[Judge], item: JudgeItem, *, max_rounds: int = 5, tolerance: float = 0.0) -> Outcome:
    """The paper's sequential debate.

    Judge 1 scores; each next judge (in panel order, cycling) sees the previous score and
    reason and adopts it or re-scores. Stop when a judge adopts (explicitly, or with a score
    within ``tolerance``): the adopted score wins. After ``max_rounds`` scored rounds without
    adoption, the mean of the score history. An excluded judge's attempt is recorded but uses
    no round; a judge never answers itself, so when only one judge is left the debate ends
    with the mean of the history so far.
    """
    turns: list[Turn] = []
    history: list[float] = []
    excluded: set[str] = set()
    previous: Turn | None = None
    position = 0
    while len(history) < max_rounds:
        judge = _next_judge(panel, position, excluded, previous.judge if previous else None)
        if judge is None:
            break
        position = panel.index(judge) + 1
        round_no = len(history) + 1
        try:
            verdict = await judge.judge(item, previous)
        except JudgeFailure as exc:
            excluded.add(judge.name)
            turns.append(Turn(round_no, judge.name, None, str(exc), False, error=exc.reason))
            continue
        agreed_with = previous.score if previous is not None else None
        adopted = agreed_with is not None and (verdict.adopted or abs(verdict.score - agreed_with) <= tolerance)
        score = agreed_with if adopted and agreed_with is not None else verdict.score
        turn = Turn(round_no, judge.name, score, verdict.reason, adopted, **_evidence(verdict))
        turns.append(turn)
        history.append(score)
        if adopted:
            return Outcome(score, "ok", "adopted", turns)
        previous = turn
    if not history:
        return Outcome(None, "failed", "no_judge_answered", turns)
    mean = round(sum(history) / len(history), 6)
    if len(history) >= max_rounds:
        return Outcome(mean, "ok", "no_agreement_mean", turns)
    return Outcome(mean, "ok", "single_judge" if len(history) == 1 else "judges_exhausted_mean", turns)


def _evidence(verdict: Verdict) -> dict:
    """What a turn records of the verdict's own reading: its distribution (a parsed score: a point)."""
    return {
        "distribution": verdict.distribution or ((verdict.score, 1.0),),
        "source": verdict.source,
        "mass": verdict.mass,
    }


def _next_judge(panel: Sequence[Judge], start: int, excluded: set[str], last: str | None) -> Judge | None:
    for offset in range(len(panel)):
        judge = panel[(start + offset) % len(panel)]
        if judge.name not in excluded and judge.name != last:
            return judge
    return None


async def independent_mean(panel: Sequence[Judge], item: JudgeItem) -> Outcome:
    """Every judge scores on its own (concurrently); the mean of those that answered."""

    async def one(judge: Judge) -> Verdict | JudgeFailure:
        try:
            return await judge.judge(item, None)
        except JudgeFailure as exc:
            return exc

    results = await asyncio.gather(*(one(j) for j in panel))
    turns = [
        Turn(i + 1, j.name, None, str(r), False, error=r.reason)
        if isinstance(r, JudgeFailure)
        else Turn(i + 1, j.name, r.score, r.reason, False, **_evidence(r))
        for i, (j, r) in enumerate(zip(panel, results))
    ]
    scores = [t.score for t in turns if t.score is not None]
    if not scores:
        return Outcome(None, "failed", "no_judge_answered", turns)
    return Outcome(round(sum(scores) / len(scores), 6), "ok", "mean", turns)


@asynccontextmanager
async def open_panel(
    configs: Sequence[JudgeSettings],
    prompt_version: str,
    cache_dir: str | os.PathLike[str] | None,
    clients: dict[str, LLMClient] | None = None,
) -> AsyncIterator[list[Judge]]:
    """The configured judges, ready to use; endpoint clients are closed and in-process models
    released on exit. ``clients`` (when given) receives each endpoint judge's client by judge
    name, so the caller can read its request counters.

    Misconfiguration (unknown prompt version, missing API key variable, unloadable model
    folder, a served folder whose server does not come up) raises here, before any sample is
    judged.
    """
    json_judges = [c for c in configs if c.resolved_protocol == "json"]
    templates = prompt_templates(prompt_version) if json_judges else {}
    async with AsyncExitStack() as stack:
        opening = _Opening(stack, templates, prompt_version, cache_dir, clients)
        panel: list[Judge] = []
        for config in configs:
            if config.kind not in JUDGE_KINDS:
                raise ValueError(
                    f"judge {config.name!r}: unknown kind {config.kind!r} (known: {', '.join(JUDGE_KINDS)})"
                )
            panel.append(await JUDGE_KINDS[config.kind](config, opening))
        yield panel


@dataclass(frozen=True)
class _Opening:
    """What a panel being opened gives each judge it builds."""

    stack: AsyncExitStack
    templates: dict[str, str]
    version: str
    cache_dir: str | os.PathLike[str] | None
    clients: dict[str, LLMClient] | None


async def _rules_judge(config: JudgeSettings, opening: _Opening) -> Judge:
    return RulesJudge(config.name)


async def _endpoint_judge(config: JudgeSettings, opening: _Opening) -> Judge:
    assert config.endpoint is not None
    client = await opening.stack.enter_async_context(LLMClient(config.endpoint, opening.cache_dir))
    if opening.clients is not None:
        opening.clients[config.name] = client
    if config.resolved_protocol == "yesno":
        return await opening.stack.enter_async_context(_token_judge(config, client, opening.version))
    return EndpointJudge(
        config.name,
        client,
        opening.templates,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        parse_retries=config.parse_retries,
        json_mode=True,
    )


async def _transformers_judge(config: JudgeSettings, opening: _Opening) -> Judge:
    assert config.model_path is not None
    if config.resolved_protocol == "yesno":
        return await opening.stack.enter_async_context(_token_judge(config, None, opening.version))
    return TransformersJudge(
        config.name,
        str(config.model_path),
        opening.templates,
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        parse_retries=config.parse_retries,
        device=config.device,
        dtype=config.dtype,
    )


JUDGE_KINDS: dict[str, Callable[[JudgeSettings, _Opening], Awaitable[Judge]]] = bind(
    "judge kinds",
    get_args(JudgeKind),
    {"rules": _rules_judge, "endpoint": _endpoint_judge, "transformers": _transformers_judge},
)


@asynccontextmanager
async def _token_judge(config: JudgeSettings, client: LLMClient | None, version: str) -> AsyncIterator[Judge]:
    if client is not None:
        assert config.endpoint is not None
        reader = EndpointReader(
            client,
            logprobs=config.endpoint.capabilities.logprobs,
            samples=config.samples,
            temperature=config.temperature,
            parse_retries=config.parse_retries,
        )
        yield TokenJudge(config.name, reader, version, config.orders)
        return
    assert config.model_path is not None
    scorer = await asyncio.to_thread(held_scorer, config.model_path, config.device, config.dtype, config.name)
    yield TokenJudge(config.name, LogitReader(scorer, config.threads), version, config.orders)
