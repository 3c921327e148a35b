"""Stage 1, hallucination synthesis: a clinically plausible wrong answer per sample.

Three backends write the same ``hallucinations.parquet`` (schemas.HALLUCINATIONS):

- ``rules`` (offline, deterministic, the demo default): clinical perturbations of the ground
  truth (tasks.clinical_rules), one picked per sample from a seed and the sample id;
- ``llm``: an OpenAI-compatible endpoint injects one error into the ground truth
  (prompt template in tasks/prompts/, JSON reply parsed defensively, re-asked with feedback
  when the reply is unusable);
- ``target``: the paper's procedure - sample the target VLM n times; an LLM picks the
  candidate that most clearly contradicts the ground truth, or, when none does, rewrites the
  ground truth into a plausible error.

Every rejection must differ from the ground truth in content and stay within a length
ratio of it (the paper's released rejections were ~6x longer than the answers, a shortcut
a model learns instead of the content). A sample without a valid rejection is a row with
status skipped/failed and a reason - never a crash, never a fabricated answer.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from functools import partial
from pathlib import Path
from string import Template
from typing import Any, Mapping, Sequence

from prefect import task

from models import llm as llm_api
from tasks import clinical_rules, schemas, ui
from tasks.config import HallucinateConfig
from tasks.store import LLM_TAG, ArtifactStore, Manifest, by_content, code_version, content_hash, stage_task_options

log = logging.getLogger(__name__)

STAGE = "hallucinate"
PROMPTS = Path(__file__).parent / "prompts"
OUTPUT = "hallucinations.parquet"
ERROR_TYPES = (*clinical_rules.ERROR_TYPES, "other")


def _prompt_files_hash() -> str:
    return content_hash({p.name: p.read_text() for p in sorted(PROMPTS.glob("*.txt"))}, length=12)


# The prompts are part of what defines the output, so their text is part of the code version.
CODE = content_hash(code_version(__name__, "tasks.clinical_rules", "models.llm", "models.vlm"), _prompt_files_hash(), length=12)


def hallucinate(store: ArtifactStore, config: HallucinateConfig, ingest: Manifest) -> Manifest:
    cache_dir = config.cache_dir or store.root / "llm-cache"
    return store.run(STAGE, CODE, config, {"ingest": ingest}, lambda out: build_hallucinations(out, config, ingest, cache_dir, store))


# What a rejection depends on: the sample's text and image (by content), and the config's
# identity (tasks.config.identity: not where caches live nor how hard the endpoint is pushed).
ITEM_FIELDS = ("sample_id", "task", "answer_type", "question", "answer", "image_sha256")


def build_hallucinations(out: Path, config: HallucinateConfig, ingest: Manifest, cache_dir: Path, store: ArtifactStore) -> dict[str, float]:
    samples = schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()
    in_scope = [s for s in samples if config.splits is None or s["split"] in config.splits]
    counts: collections.Counter[str] = collections.Counter(samples=len(samples), not_in_splits=len(samples) - len(in_scope))
    if config.backend != "rules":
        _check_images_allowed(config)
    items = store.items(STAGE, CODE, config)
    tags = () if config.backend == "rules" else (LLM_TAG,)
    rows = items.build(out, [items.item(by_content(s, ITEM_FIELDS), s) for s in in_scope],
                       partial(hallucinate_items, config, str(cache_dir)), tags=tags)
    counts.update({f"llm_{k}": int(v) for k, v in items.counts.items()})
    schemas.write_parquet(schemas.table(rows, schemas.HALLUCINATIONS), out / OUTPUT)
    for row in rows:
        counts[row["status"] if row["status"] == "ok" else f"{row['status']}_{row['reason']}"] += 1
        if row["status"] == "ok":
            counts[f"error_{row['error_type']}"] += 1
    return {name: float(value) for name, value in counts.items()}


def hallucinate_items(config: HallucinateConfig, cache_dir: str, samples: Sequence[Mapping[str, Any]], folders: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One shard: a HALLUCINATIONS row per sample, and the LLM client's counters."""
    if config.backend == "rules":
        return [rules_row(sample, config) for sample in samples], {}
    if config.backend == "llm":
        return llm_rows(samples, config, Path(cache_dir))
    return target_rows(samples, config, Path(cache_dir))


# --- validation shared by all backends ---------------------------------------------------------

def rejection_problem(rejected: str, answer: str, config: HallucinateConfig) -> str | None:
    """Why ``rejected`` cannot be used as the wrong answer for ``answer`` (None: it can)."""
    if not rejected.strip():
        return "empty"
    if clinical_rules.normalized(rejected) == clinical_rules.normalized(answer):
        return "same_as_answer"
    floor = config.length_floor_chars
    ratio = max(len(rejected.strip()), floor) / max(len(answer.strip()), floor)
    if ratio < config.min_length_ratio:
        return "too_short"
    if ratio > config.max_length_ratio:
        return "too_long"
    return None


def _row(sample: Mapping[str, Any], backend: str, *, rejected: str | None = None, error_type: str | None = None,
         candidates: Sequence[str] | None = None, attempts: int = 0, status: str = "ok", reason: str | None = None) -> dict[str, Any]:
    return {"sample_id": sample["sample_id"], "rejected": rejected, "backend": backend, "error_type": error_type,
            "candidates": list(candidates) if candidates is not None else None, "attempts": attempts,
            "status": status, "reason": reason}


def _empty_answer_row(sample: Mapping[str, Any], backend: str) -> dict[str, Any] | None:
    if not sample["answer"].strip():
        return _row(sample, backend, status="skipped", reason="empty_answer")
    return None


# --- rules ----------------------------------------------------------------------------------------

def rules_row(sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
    if (empty := _empty_answer_row(sample, "rules")) is not None:
        return empty
    answer = sample["answer"]
    found = clinical_rules.candidates(answer, sample["task"])
    if not found:
        return _row(sample, "rules", status="skipped", reason="no_rule_applies")
    problems = collections.Counter()
    for tried, candidate in enumerate(clinical_rules.ordered(found, f"{config.seed}:{sample['sample_id']}"), start=1):
        problem = rejection_problem(candidate.text, answer, config)
        if problem is None:
            return _row(sample, "rules", rejected=candidate.text, error_type=candidate.error_type, attempts=tried)
        problems[problem] += 1
    return _row(sample, "rules", attempts=len(found), status="failed", reason=problems.most_common(1)[0][0])


# --- llm injection ----------------------------------------------------------------------------------

def load_prompt(name: str) -> tuple[str, Template]:
    """A template file: the system message, a line '---', the user message ($placeholders)."""
    path = PROMPTS / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt template {path} not found (have: {sorted(p.stem for p in PROMPTS.glob('*.txt'))})")
    system, _, user = path.read_text().partition("\n---\n")
    return system.strip(), Template(user.strip())


def _prompt_fields(sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
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


def normalize_error_type(value: Any) -> str:
    text = str(value or "").strip().lower().replace("-", "_").replace(" ", "_")
    return text if text in ERROR_TYPES else "other"


FEEDBACK = {
    "malformed_json": 'That was not the JSON object asked for. Reply with JSON only: {"rejected": "...", "error_type": "..."}',
    "empty": "The wrong answer was empty. Write a wrong answer.",
    "same_as_answer": "That says the same as the correct answer. Change one clinical fact.",
    "too_short": "That is too short: keep between $min_chars and $max_chars characters, in the style of the correct answer.",
    "too_long": "That is too long: keep between $min_chars and $max_chars characters, in the style of the correct answer.",
}


async def inject(client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig) -> tuple[dict[str, Any], int]:
    """Ask for a wrong answer; on an unusable reply, say why and ask again (max_attempts in all).

    Each retry extends the conversation, so it is a new request (never a cache hit on the
    reply it is correcting), and a re-run replays the whole exchange from the cache.
    """
    system, template = load_prompt(config.inject_prompt)
    fields = _prompt_fields(sample, config)
    images = [sample["image_path"]] if config.send_images else []
    messages = [llm_api.system(system), llm_api.user(template.substitute(fields), images=images)]
    max_tokens = fields["max_chars"] // 2 + 64  # ~4 characters a token, plus the JSON around it
    problem = "no_attempt"
    for attempt in range(1, config.max_attempts + 1):
        reply = await client.chat(messages, temperature=config.temperature, max_tokens=max_tokens, json_mode=config.json_mode)
        parsed = llm_api.parse_json_reply(reply.text)
        rejected = parsed.get("rejected") if parsed else None
        if not isinstance(rejected, str):
            problem = "malformed_json"
        else:
            rejected = rejected.strip()
            problem = rejection_problem(rejected, sample["answer"], config)
            if problem is None:
                return {"rejected": rejected, "error_type": normalize_error_type(parsed.get("error_type"))}, attempt
        messages = [*messages, {"role": "assistant", "content": reply.text},
                    llm_api.user(Template(FEEDBACK[problem]).substitute(fields))]
    return {"problem": problem}, config.max_attempts


async def _llm_row(client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig) -> dict[str, Any]:
    if (empty := _empty_answer_row(sample, "llm")) is not None:
        return empty
    try:
        result, attempts = await inject(client, sample, config)
    except llm_api.LLMError as exc:
        return _row(sample, "llm", status="failed", reason=f"llm_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one sample's surprise must not end the run
        log.exception("hallucinate: sample %s failed", sample["sample_id"])
        return _row(sample, "llm", status="failed", reason=f"error_{type(exc).__name__}")
    if "problem" in result:
        return _row(sample, "llm", attempts=attempts, status="failed", reason=result["problem"])
    return _row(sample, "llm", rejected=result["rejected"], error_type=result["error_type"], attempts=attempts)


def _check_images_allowed(config: HallucinateConfig) -> None:
    if config.send_images and not config.llm.images_allowed:
        raise ValueError(
            f"hallucinate.send_images is on but {config.llm.base_url} may not receive images; "
            "set llm.allow_images: true to allow a non-local endpoint"
        )


def llm_rows(samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    _check_images_allowed(config)

    async def work(client: llm_api.LLMClient) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = await asyncio.gather(*(_llm_row(client, s, config) for s in samples))
        return list(rows), dict(client.counts)

    return llm_api.run_with_client(config.llm, cache_dir, work)


# --- target model sampling + LLM selection ------------------------------------------------------------

def sample_target(samples: Sequence[Mapping[str, Any]], config: HallucinateConfig) -> list[list[str] | Exception]:
    """``num_samples`` answers of the target VLM per sample; a batch that fails is retried per
    sample, so one unreadable image costs one row, not the batch."""
    from models import vlm as vlm_api  # torch + transformers load only for this backend

    target = config.target
    model = vlm_api.load(target.model_path, device=target.device)
    settings = vlm_api.GenerationSettings(max_new_tokens=target.max_new_tokens, temperature=target.temperature,
                                          top_p=target.top_p, n=target.num_samples, seed=target.seed,
                                          batch_size=target.batch_size)
    results: list[list[str] | Exception] = []
    for start in range(0, len(samples), target.batch_size):
        batch = samples[start : start + target.batch_size]
        try:
            batch_settings = dataclasses.replace(settings, seed=target.seed + start)
            results.extend(vlm_api.generate(model, [s["question"] for s in batch], [s["image_path"] for s in batch], batch_settings))
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


async def select(client: llm_api.LLMClient, sample: Mapping[str, Any], usable: Sequence[str],
                 config: HallucinateConfig) -> tuple[str, str] | None:
    """The selector's pick among usable candidates as (answer, error_type); None when it picks none."""
    system, template = load_prompt(config.select_prompt)
    fields = _prompt_fields(sample, config) | {"candidates": "\n".join(f"{i}. {c}" for i, c in enumerate(usable, start=1))}
    reply = await client.chat([llm_api.system(system), llm_api.user(template.substitute(fields))],
                              temperature=0.0, max_tokens=64, json_mode=config.json_mode)
    parsed = llm_api.parse_json_reply(reply.text) or {}
    try:
        choice = int(parsed.get("choice"))
    except (TypeError, ValueError):
        return None
    if 1 <= choice <= len(usable):
        return usable[choice - 1], normalize_error_type(parsed.get("error_type"))
    return None


async def _target_row(client: llm_api.LLMClient, sample: Mapping[str, Any], sampled: list[str] | Exception,
                      config: HallucinateConfig) -> dict[str, Any]:
    if isinstance(sampled, Exception):
        return _row(sample, "target", status="failed", reason=f"generation_{type(sampled).__name__}")
    if (empty := _empty_answer_row(sample, "target")) is not None:
        return {**empty, "candidates": sampled}
    usable = list(dict.fromkeys(c.strip() for c in sampled if rejection_problem(c, sample["answer"], config) is None))
    try:
        picked = await select(client, sample, usable, config) if usable else None
        if picked is not None:
            return _row(sample, "target", rejected=picked[0], error_type=picked[1], candidates=sampled, attempts=1)
        result, attempts = await inject(client, sample, config)
    except llm_api.LLMError as exc:
        return _row(sample, "target", candidates=sampled, status="failed", reason=f"llm_{exc.reason}")
    except Exception as exc:  # noqa: BLE001 - one sample's surprise must not end the run
        log.exception("hallucinate: sample %s failed", sample["sample_id"])
        return _row(sample, "target", candidates=sampled, status="failed", reason=f"error_{type(exc).__name__}")
    attempts += 1 if usable else 0  # the selector call that picked none
    if "problem" in result:
        return _row(sample, "target", candidates=sampled, attempts=attempts, status="failed", reason=result["problem"])
    # A rewrite of the ground truth, not one of the model's answers: error_type says what, the
    # empty selection is visible from the candidates column.
    return _row(sample, "target", rejected=result["rejected"], error_type=result["error_type"], candidates=sampled,
                attempts=attempts)


def target_rows(samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    _check_images_allowed(config)
    sampled = sample_target(samples, config) if samples else []

    async def work(client: llm_api.LLMClient) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = await asyncio.gather(*(_target_row(client, s, c, config) for s, c in zip(samples, sampled)))
        return list(rows), dict(client.counts)

    return llm_api.run_with_client(config.llm, cache_dir, work)


# --- Prefect ----------------------------------------------------------------------------------------

@task(**stage_task_options(STAGE, CODE))
def hallucinate_task(store_root: str, config: HallucinateConfig, ingest: Manifest) -> Manifest:
    manifest = hallucinate(ArtifactStore(store_root), config, ingest)
    ui.manifest_markdown(manifest)
    rows = schemas.read_parquet(manifest.file(OUTPUT), schemas.HALLUCINATIONS).to_pylist()
    answers = {s["sample_id"]: s["answer"] for s in schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()}
    ui.table(
        "hallucinate-examples",
        [{"sample_id": r["sample_id"], "answer": answers.get(r["sample_id"], "")[:200], "rejected": (r["rejected"] or "")[:200],
          "error_type": r["error_type"], "status": r["status"], "reason": r["reason"]} for r in rows],
        "Ground truth vs synthesized hallucination (first rows)",
    )
    return manifest
