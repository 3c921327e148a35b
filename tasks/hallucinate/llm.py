"""The ``llm`` backend: an OpenAI-compatible endpoint injects one error into the ground truth.

Two protocols, by what the endpoint declares: with structured output (``capabilities.
structured_output``: GPT-4o, vLLM) a JSON reply naming the error type, re-asked with feedback
when unusable; otherwise the few-shot plain-text protocol a small model can follow
(tasks/hallucinate/fewshot.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from string import Template
from typing import Any

from models import llm as llm_api
from models import prompts
from tasks.config import ConfigError, HallucinateConfig
from tasks.hallucinate import fewshot
from tasks.hallucinate.rows import ERROR_TYPES, empty_answer_row, normalize_error_type, rejection_problem, row

OnRow = Callable[[int, dict[str, Any]], None]

log = logging.getLogger(__name__)


def prompt_fields(sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
    answer = sample["answer"].strip()
    floor = config.length_floor_chars
    return {
        "task_kind": "report" if sample["task"] == "report" else f"{sample['answer_type']} question",
        "question": sample["question"],
        "answer": answer,
        "min_chars": max(1, int(config.min_length_ratio * max(len(answer), floor))),
        "max_chars": int(config.max_length_ratio * max(len(answer), floor)),
        "error_types": ", ".join(ERROR_TYPES),
    }


FEEDBACK = {
    "malformed_json": (
        'That was not the JSON object asked for. Reply with JSON only: {"rejected": "...", "error_type": "..."}'
    ),
    "empty": "The wrong answer was empty. Write a wrong answer.",
    "same_as_answer": "That says the same as the correct answer. Change one clinical fact.",
    "too_short": (
        "That is too short: keep between $min_chars and $max_chars characters, in the style of the correct answer."
    ),
    "too_long": (
        "That is too long: keep between $min_chars and $max_chars characters, in the style of the correct answer."
    ),
}


async def inject(
    client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig
) -> tuple[dict[str, Any], int]:
    """A wrong answer by the endpoint's protocol: ({"rejected", "error_type"} or {"problem"}, attempts)."""
    if config.llm.capabilities.structured_output:
        return await inject_json(client, sample, config)
    return await fewshot.inject(client, sample, config, prompt_fields(sample, config)["max_chars"])


async def inject_json(
    client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig
) -> tuple[dict[str, Any], int]:
    """Ask for a JSON wrong answer; on an unusable reply, say why and ask again (max_attempts in all).

    Each retry extends the conversation, so it is a new request (never a cache hit on the
    reply it is correcting), and a re-run replays the whole exchange from the cache.
    """
    system, template = prompts.chat(config.inject_prompt)
    fields = prompt_fields(sample, config)
    images = [sample["image_path"]] if config.send_images else []
    messages = [llm_api.system(system), llm_api.user(template.substitute(fields), images=images)]
    max_tokens = fields["max_chars"] // 2 + 64  # ~4 characters a token, plus the JSON around it
    problem = "no_attempt"
    for attempt in range(1, config.max_attempts + 1):
        reply = await client.chat(
            messages,
            temperature=config.temperature,
            max_tokens=max_tokens,
            json_mode=True,
        )
        parsed = llm_api.parse_json_reply(reply.text)
        rejected = parsed.get("rejected") if parsed else None
        if not isinstance(rejected, str):
            problem = "malformed_json"
        else:
            rejected = rejected.strip()
            problem = rejection_problem(rejected, sample["answer"], config)
            if problem is None:
                return {"rejected": rejected, "error_type": normalize_error_type(parsed.get("error_type"))}, attempt
        messages = [
            *messages,
            {"role": "assistant", "content": reply.text},
            llm_api.user(Template(FEEDBACK[problem]).substitute(fields)),
        ]
    return {"problem": problem}, config.max_attempts


async def _llm_row(client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
    if (empty := empty_answer_row(sample, "llm")) is not None:
        return empty
    try:
        result, attempts = await inject(client, sample, config)
    except llm_api.LLMError as exc:
        return row(sample, "llm", status="failed", reason=f"llm_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one sample's surprise must not end the run
        log.exception("hallucinate: sample %s failed", sample["sample_id"])
        return row(sample, "llm", status="failed", reason=f"error_{type(exc).__name__}")
    if "problem" in result:
        return row(sample, "llm", attempts=attempts, status="failed", reason=result["problem"])
    return row(sample, "llm", rejected=result["rejected"], error_type=result["error_type"], attempts=attempts)


def check_images_allowed(config: HallucinateConfig) -> None:
    if config.send_images and not config.llm.images_allowed:
        raise ConfigError(
            f"hallucinate.send_images is on but {config.llm.base_url} may not receive images; "
            "set llm.allow_images: true to allow a non-local endpoint"
        )


def llm_rows(
    samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path, on_row: OnRow | None = None
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A row per sample, in order, and the client's counters; ``on_row(index, row)`` as each finishes."""
    check_images_allowed(config)

    async def one(client: llm_api.LLMClient, index: int, sample: Mapping[str, Any]) -> dict[str, Any]:
        result = await _llm_row(client, sample, config)
        if on_row is not None:
            on_row(index, result)
        return result

    async def work(client: llm_api.LLMClient) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = await asyncio.gather(*(one(client, i, s) for i, s in enumerate(samples)))
        return list(rows), dict(client.counts)

    return llm_api.run_with_client(config.llm, cache_dir, work)
