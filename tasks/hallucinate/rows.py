"""What every hallucination backend shares: the row it writes and the guard a rejection must pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tasks.config import HallucinateConfig
from tasks.hallucinate import clinical_rules

ERROR_TYPES = (*clinical_rules.ERROR_TYPES, "other")
# Where an ok rejection's text came from: the target model's own sampled answer (on-policy, the
# paper's aim), an LLM's rewrite of the ground truth, or the offline rules. The target backend
# says which of the first two each row is; the others write one kind only.
ORIGINS = ("target_model", "llm_rewrite", "rules")
BACKEND_ORIGIN = {"rules": "rules", "llm": "llm_rewrite", "target": "llm_rewrite"}


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


def row(
    sample: Mapping[str, Any],
    backend: str,
    *,
    rejected: str | None = None,
    error_type: str | None = None,
    candidates: Sequence[str] | None = None,
    attempts: int = 0,
    status: str = "ok",
    reason: str | None = None,
    origin: str | None = None,
) -> dict[str, Any]:
    return {
        "sample_id": sample["sample_id"],
        "rejected": rejected,
        "backend": backend,
        "error_type": error_type,
        "candidates": list(candidates) if candidates is not None else None,
        "attempts": attempts,
        "status": status,
        "reason": reason,
        "origin": (origin or BACKEND_ORIGIN[backend]) if status == "ok" else None,
        "fallbacks": [],
    }


def empty_answer_row(sample: Mapping[str, Any], backend: str) -> dict[str, Any] | None:
    if not sample["answer"].strip():
        return row(sample, backend, status="skipped", reason="empty_answer")
    return None


def normalize_error_type(value: Any) -> str:
    text = str(value or "").strip().lower().replace("-", "_").replace(" ", "_")
    return text if text in ERROR_TYPES else "other"
