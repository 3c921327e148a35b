"""The ``target`` backend, the paper's procedure: sample the target VLM n times; an LLM picks the
candidate that most clearly contradicts the ground truth or, when none does, rewrites the
ground truth into a plausible error."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models import llm as llm_api
from models import prompts
from tasks.config import HallucinateConfig
from tasks.hallucinate.llm import check_images_allowed, inject, prompt_fields
from tasks.hallucinate.rows import empty_answer_row, normalize_error_type, rejection_problem, row

log = logging.getLogger(__name__)


def sample_target(samples: Sequence[Mapping[str, Any]], config: HallucinateConfig) -> list[list[str] | Exception]:
    """``num_samples`` answers of the target VLM per sample; a batch that fails is retried per
    sample, so one unreadable image costs one row, not the batch."""
    from models import vlm as vlm_api  # torch + transformers load only for this backend

    target = config.target
    model = vlm_api.load(target.model_path, device=target.device)
    settings = vlm_api.GenerationSettings(
        max_new_tokens=target.max_new_tokens,
        temperature=target.temperature,
        top_p=target.top_p,
        n=target.num_samples,
        seed=target.seed,
        batch_size=target.batch_size,
    )
    results: list[list[str] | Exception] = []
    for start in range(0, len(samples), target.batch_size):
        batch = samples[start : start + target.batch_size]
        try:
            batch_settings = dataclasses.replace(settings, seed=target.seed + start)
            results.extend(
                vlm_api.generate(
                    model, [s["question"] for s in batch], [s["image_path"] for s in batch], batch_settings
                )
            )
            continue
        except Exception as exc:  # noqa: BLE001 - isolate the failing sample below
            log.warning("hallucinate: target batch at %d failed (%s); retrying per sample", start, exc)
        for offset, sample in enumerate(batch):
            try:
                single = dataclasses.replace(settings, seed=target.seed + start + offset, batch_size=1)
                results.extend(vlm_api.generate(model, [sample["question"]], [sample["image_path"]], single))
            except Exception as exc:  # noqa: BLE001
                results.append(exc)
    return results


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
        json_mode=config.json_mode,
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
    client: llm_api.LLMClient, sample: Mapping[str, Any], sampled: list[str] | Exception, config: HallucinateConfig
) -> dict[str, Any]:
    if isinstance(sampled, Exception):
        return row(sample, "target", status="failed", reason=f"generation_{type(sampled).__name__}")
    if (empty := empty_answer_row(sample, "target")) is not None:
        return {**empty, "candidates": sampled}
    usable = list(dict.fromkeys(c.strip() for c in sampled if rejection_problem(c, sample["answer"], config) is None))
    try:
        picked = await select(client, sample, usable, config) if usable else None
        if picked is not None:
            return row(sample, "target", rejected=picked[0], error_type=picked[1], candidates=sampled, attempts=1)
        result, attempts = await inject(client, sample, config)
    except llm_api.LLMError as exc:
        return row(sample, "target", candidates=sampled, status="failed", reason=f"llm_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one sample's surprise must not end the run
        log.exception("hallucinate: sample %s failed", sample["sample_id"])
        return row(sample, "target", candidates=sampled, status="failed", reason=f"error_{type(exc).__name__}")
    attempts += 1 if usable else 0  # the selector call that picked none
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


def target_rows(
    samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    check_images_allowed(config)
    sampled = sample_target(samples, config) if samples else []

    async def work(client: llm_api.LLMClient) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = await asyncio.gather(*(_target_row(client, s, c, config) for s, c in zip(samples, sampled)))
        return list(rows), dict(client.counts)

    return llm_api.run_with_client(config.llm, cache_dir, work)
