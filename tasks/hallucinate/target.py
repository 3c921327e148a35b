"""The ``target`` backend, the paper's procedure: sample the target VLM n times; an LLM picks the
candidate that most clearly contradicts the ground truth or, when none does, rewrites the
ground truth into a plausible error.

A closed question's sampled answer is reduced to what it answers - its leading yes/no, or the
one option of the question it names - before the length guard: a sentence such as "No, there
is no effusion." never fits 0.5-2x of "Yes", so without the reduction short answers were
almost always rewritten, not taken from the model (rows record ``origin``).

The sampled model is ``target.model_path``, with ``target.adapter`` merged in when set (the model
a round of `mmedpo iterate` trained), or the model behind ``target.endpoint``, an OpenAI-compatible
VLM server (vLLM) asked for n answers per question with its image attached. Without an LLM,
``selector: first`` takes the first sampled answer that passes the guard and ``fallback: rules``
(or ``skip``) replaces the LLM's rewrite, so rejections stay on-policy and nothing calls an
endpoint. Each batch's sampling seed is derived
from its samples' ids, not their position in a shard: with ``batch_size: 1`` a sample's answers
depend on the sample and the model alone (a resumed run, another shard size, the same)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models import llm as llm_api
from models import prompts, resident
from tasks.config import ConfigError, HallucinateConfig, TargetSamplingConfig
from tasks.hallucinate.clinical_text import match_case
from tasks.hallucinate.llm import OnRow, check_images_allowed, inject, prompt_fields
from tasks.hallucinate.rows import empty_answer_row, normalize_error_type, rejection_problem, row
from tasks.hallucinate.rules import rules_row
from tasks.metrics import ARTICLES, normalize_answer, words
from tasks.store import tree_digest

log = logging.getLogger(__name__)


def sampling_model(target: TargetSamplingConfig) -> Any:
    """The sampled VLM: ``model_path``, with ``adapter`` merged in when one is set; loaded once per
    worker process (``models.resident``), keyed by the folders' content and the device."""
    return resident.held(*_resident(target)).value


def _resident(target: TargetSamplingConfig) -> tuple[tuple, Any]:
    from models import precision
    from models import vlm as vlm_api  # torch + transformers load only for this backend

    assert target.model_path is not None
    device = precision.resolve(target.device, "hallucinate.target")
    adapter = tree_digest(target.adapter) if target.adapter is not None else None
    key = ("target", tree_digest(target.model_path), adapter, str(device), target.max_pixels)

    def build() -> Any:
        model = vlm_api.load(target.model_path, device=device, max_pixels=target.max_pixels)
        return vlm_api.apply_adapter(model, target.adapter) if target.adapter is not None else model

    return key, build


def generation_settings(target: TargetSamplingConfig, samples: Sequence[Mapping[str, Any]]) -> Any:
    """How one batch of ``samples`` is sampled; the seed comes from the samples' ids."""
    from models import vlm as vlm_api

    return vlm_api.GenerationSettings(
        max_new_tokens=target.max_new_tokens,
        temperature=target.temperature,
        top_p=target.top_p,
        n=target.num_samples,
        seed=batch_seed(target.seed, samples),
        batch_size=len(samples),
    )


def batch_seed(seed: int, samples: Sequence[Mapping[str, Any]]) -> int:
    ids = "\n".join(s["sample_id"] for s in samples)
    return seed + int(hashlib.sha256(ids.encode()).hexdigest()[:8], 16)


def sample_target(samples: Sequence[Mapping[str, Any]], config: HallucinateConfig) -> list[list[str] | Exception]:
    """``num_samples`` answers of the target VLM per sample; a batch that fails is retried per
    sample, so one unreadable image costs one row, not the batch."""
    target = config.target
    with resident.using(*_resident(target)) as model:  # one shard at a time on the one copy
        return _sample(model, samples, target)


def _sample(model: Any, samples: Sequence[Mapping[str, Any]], target: TargetSamplingConfig) -> list[Any]:
    from models import vlm as vlm_api

    results: list[list[str] | Exception] = []
    for start in range(0, len(samples), target.batch_size):
        batch = samples[start : start + target.batch_size]
        try:
            results.extend(
                vlm_api.generate(
                    model,
                    [s["question"] for s in batch],
                    [s["image_path"] for s in batch],
                    generation_settings(target, batch),
                )
            )
            continue
        except Exception as exc:  # noqa: BLE001 - isolate the failing sample below
            log.warning("hallucinate: target batch at %d failed (%s); retrying per sample", start, exc)
        for sample in batch:
            try:
                single = generation_settings(target, [sample])
                results.extend(vlm_api.generate(model, [sample["question"]], [sample["image_path"]], single))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
    return results


async def sample_endpoint(
    client: llm_api.LLMClient, samples: Sequence[Mapping[str, Any]], target: TargetSamplingConfig
) -> list[list[str] | Exception]:
    """``num_samples`` answers per sample from the endpoint, each sample's seeded by its id alone;
    a failed request costs its sample's row (an LLMError in its place)."""

    async def one(sample: Mapping[str, Any]) -> list[str] | Exception:
        try:
            return await endpoint_answers(client, sample, target)
        except llm_api.LLMError as exc:
            return exc

    return list(await asyncio.gather(*(one(sample) for sample in samples)))


async def endpoint_answers(
    client: llm_api.LLMClient, sample: Mapping[str, Any], target: TargetSamplingConfig
) -> list[str]:
    """One request for all n answers (vLLM gives n choices); a server that gives fewer (transformers
    serve gives one) is asked again, with the next seed, until there are n."""
    messages = [llm_api.user(str(sample["question"]), [sample["image_path"]])]
    seed = batch_seed(target.seed, [sample])
    answers: list[str] = []
    while len(answers) < target.num_samples:
        reply = await client.chat(
            messages,
            temperature=target.temperature,
            top_p=target.top_p,
            max_tokens=target.max_new_tokens,
            seed=seed,
            n=target.num_samples - len(answers),
        )
        answers.extend(reply.choices or (reply.text,))
        seed += 1
    return answers[: target.num_samples]


def closed_answer(candidate: str, question: str, answer: str) -> str:
    """What a sampled answer to a closed question answers, in the ground truth's case: "No" from
    "No, the lungs are clear." for a yes/no question, "CT" from "This is a CT scan." for
    "Is this a CT or MRI?". A candidate that answers neither way is returned unchanged."""
    if normalize_answer(answer) in ("yes", "no"):
        first = normalize_answer(words(candidate)[0]) if words(candidate) else ""
        return match_case(answer.strip(), first) if first in ("yes", "no") else candidate
    named = [option for option in question_options(question, answer) if _mentions(candidate, option)]
    return match_case(answer.strip(), named[0]) if len(named) == 1 else candidate


def question_options(question: str, answer: str) -> list[str]:
    """The two options of an "X or Y" question whose ground truth is one of them (lower-case),
    the other taken as as many words on the other side of "or"; [] for any other question."""
    said, given = _content_words(question), _content_words(answer)
    n = len(given)
    for i in range(len(said) - n + 1):
        if said[i : i + n] != given:
            continue
        if said[i + n : i + n + 1] == ["or"] and len(said) >= i + 2 * n + 1:
            return [" ".join(given), " ".join(said[i + n + 1 : i + 2 * n + 1])]
        if i > n and said[i - 1] == "or":
            return [" ".join(said[i - 1 - n : i - 1]), " ".join(given)]
    return []


def _content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in ARTICLES]


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", " ".join(_content_words(text))) is not None


async def select(
    client: llm_api.LLMClient, sample: Mapping[str, Any], usable: Sequence[str], config: HallucinateConfig
) -> tuple[str, str] | None:
    """The selector's pick among usable candidates as (answer, error_type); None when it picks none."""
    system, template = prompts.chat(config.select_prompt)
    fields = prompt_fields(sample, config) | {
        "candidates": "\n".join(f"{i}. {c}" for i, c in enumerate(usable, start=1))
    }
    reply = await client.chat(
        [llm_api.system(system), llm_api.user(template.substitute(fields))],
        temperature=0.0,
        max_tokens=64,
        json_mode=config.llm.capabilities.structured_output,
    )
    parsed = llm_api.parse_json_reply(reply.text) or {}
    try:
        choice = int(parsed.get("choice"))
    except (TypeError, ValueError):
        return None
    if 1 <= choice <= len(usable):
        return usable[choice - 1], normalize_error_type(parsed.get("error_type"))
    return None


async def _target_row(
    client: llm_api.LLMClient | None,
    sample: Mapping[str, Any],
    sampled: list[str] | Exception,
    config: HallucinateConfig,
) -> dict[str, Any]:
    if isinstance(sampled, Exception):
        return row(sample, "target", status="failed", reason=f"generation_{type(sampled).__name__}")
    if (empty := empty_answer_row(sample, "target")) is not None:
        return {**empty, "candidates": sampled}
    usable = usable_answers(sample, sampled, config)
    try:
        picked = await pick(client, sample, usable, config)
        if picked is not None:
            return row(
                sample,
                "target",
                rejected=picked[0],
                error_type=picked[1],
                candidates=sampled,
                attempts=1 if config.target.selector == "llm" else 0,
                origin="target_model",
            )
        if config.target.fallback != "llm":
            return fallback_row(sample, sampled, config)
        assert client is not None
        result, attempts = await inject(client, sample, config)
    except llm_api.LLMError as exc:
        return row(sample, "target", candidates=sampled, status="failed", reason=f"llm_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one sample's surprise must not end the run
        log.exception("hallucinate: sample %s failed", sample["sample_id"])
        return row(sample, "target", candidates=sampled, status="failed", reason=f"error_{type(exc).__name__}")
    attempts += 1 if usable and config.target.selector == "llm" else 0  # the selector call that picked none
    if "problem" in result:
        return row(sample, "target", candidates=sampled, attempts=attempts, status="failed", reason=result["problem"])
    # A rewrite of the ground truth, not one of the model's answers: error_type says what, the
    # empty selection is visible from the candidates column.
    return row(
        sample,
        "target",
        rejected=result["rejected"],
        error_type=result["error_type"],
        candidates=sampled,
        attempts=attempts,
    )


def usable_answers(sample: Mapping[str, Any], sampled: Sequence[str], config: HallucinateConfig) -> list[str]:
    """The sampled answers that may be the rejection (closed ones reduced first), in sampling order."""
    answers = list(sampled)
    if sample["answer_type"] == "closed":
        answers = [closed_answer(c, sample["question"], sample["answer"]) for c in sampled]
    return list(dict.fromkeys(c.strip() for c in answers if rejection_problem(c, sample["answer"], config) is None))


async def pick(
    client: llm_api.LLMClient | None, sample: Mapping[str, Any], usable: Sequence[str], config: HallucinateConfig
) -> tuple[str, str] | None:
    """The rejection among the usable answers, as (answer, error_type): the selector's choice,
    or with ``selector: first`` the first one (a flipped yes/no says so, anything else is ``other``)."""
    if not usable:
        return None
    if config.target.selector == "llm":
        assert client is not None
        return await select(client, sample, usable, config)
    first = usable[0]
    flipped = {normalize_answer(first), normalize_answer(sample["answer"])} == {"yes", "no"}
    return first, "yes_no_flip" if flipped else "other"


def fallback_row(sample: Mapping[str, Any], sampled: Sequence[str], config: HallucinateConfig) -> dict[str, Any]:
    """No sampled answer picked and no LLM to rewrite: the offline rules' perturbation, or nothing."""
    if config.target.fallback == "skip":
        return row(sample, "target", candidates=sampled, status="skipped", reason="no_usable_candidate")
    ruled = rules_row(sample, config)
    if ruled["status"] != "ok":
        return {**ruled, "backend": "target", "candidates": list(sampled)}
    return row(
        sample,
        "target",
        rejected=ruled["rejected"],
        error_type=ruled["error_type"],
        candidates=sampled,
        attempts=ruled["attempts"],
        origin="rules",
    )


def check_adapter_served(target: TargetSamplingConfig) -> None:
    """Before sampling a trained adapter through ``target.endpoint`` (an iterate round's): the server
    must serve it under ``endpoint.model``, else a ConfigError that says how to load it - sampling
    the base model instead would make the round silently off-policy. Asked only when answers are to
    be sampled, so a re-run whose finished rounds are reused needs no old adapter served."""
    endpoint = target.endpoint
    if endpoint is None or target.adapter is None:
        return
    name, where = endpoint.model, endpoint.base_url
    try:
        names = llm_api.served_models(endpoint)
    except llm_api.LLMError as exc:
        raise ConfigError(f"hallucinate.target.endpoint: cannot list the models {where} serves ({exc})") from None
    if name not in names:
        load = json.dumps({"lora_name": name, "lora_path": str(target.adapter)})
        raise ConfigError(
            f"hallucinate.target.endpoint: {where} does not serve {name!r}, the adapter {target.adapter} "
            f"(it serves: {', '.join(names) or 'nothing'}). Load it into the running vLLM server (started with "
            f"VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): curl -X POST {where}/load_lora_adapter -H 'Content-Type: "
            f"application/json' -d '{load}', or restart it with --enable-lora --lora-modules {name}={target.adapter}; "
            "then run again (finished stages and rounds are reused)"
        )


def target_rows(
    samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path, on_row: OnRow | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    if config.target.uses_llm:
        check_images_allowed(config)
    if not samples:
        sampled: list[list[str] | Exception] = []
    elif config.target.endpoint is not None:
        target = config.target
        assert target.endpoint is not None
        # The server holds the model: its adapter (a round's, served under a name reused from run to
        # run) is named in every cached reply's key by content.
        served = tree_digest(target.adapter) if target.adapter is not None else None
        check_adapter_served(target)
        sampled = llm_api.run_with_client(
            target.endpoint, cache_dir, lambda client: sample_endpoint(client, samples, target), served
        )
    else:
        sampled = sample_target(samples, config)

    async def one(
        client: llm_api.LLMClient | None, index: int, sample: Mapping[str, Any], candidates: Any
    ) -> dict[str, Any]:
        result = await _target_row(client, sample, candidates, config)
        if on_row is not None:
            on_row(index, result)
        return result

    async def work(client: llm_api.LLMClient | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = await asyncio.gather(*(one(client, i, s, c) for i, (s, c) in enumerate(zip(samples, sampled))))
        return list(rows), dict(client.counts) if client is not None else {}

    if not config.target.uses_llm:
        return llm_api.run_sync(lambda: work(None))
    return llm_api.run_with_client(config.llm, cache_dir, work)
