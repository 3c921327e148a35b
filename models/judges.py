"""Clinical-relevance judges: what a judge reads and returns, and the model-backed judges.

A judge reads one text pair (question, ground truth, hallucinated answer) and returns a
score in [0, 1] with a reason; in a debate it also sees the previous judge's score and
reason and either adopts that score or re-scores. Three kinds:

- ``RulesJudge`` (models/rules_judge.py): offline and deterministic, from the error type the
  hallucinate stage recorded and the clinical weight of the words that changed;
- ``EndpointJudge``: any OpenAI-compatible server (vLLM, llama.cpp, OpenAI) via models.llm;
- ``TransformersJudge``: a local causal LM folder.

Those two follow the JSON protocol (a 0-1 score and a reason, parsed); the yes/no protocol that
reads score-token probabilities (G-Eval) is models/token_judges.py.

LLM replies are parsed defensively; a judge that still answers junk (or is unreachable)
after its retries is excluded for that sample, and the exclusion is recorded as a round.
models/panel.py combines a panel of judges.
"""

from __future__ import annotations

import asyncio
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from models import prompts
from models.llm import LLMClient, LLMError, parse_json_reply, user

REASON_LIMIT = 500


@dataclass(frozen=True)
class JudgeItem:
    """One text pair to judge."""

    sample_id: str
    question: str
    answer: str  # the ground truth (chosen)
    rejected: str  # the hallucinated answer
    error_type: str | None = None  # what the hallucinate stage says it changed
    answer_type: str | None = None  # closed | open | report


@dataclass(frozen=True)
class Verdict:
    score: float
    reason: str
    adopted: bool = False  # the judge explicitly adopted the previous score
    # P(score value) the score came from, as (value, p) pairs: over the score tokens for the
    # yes/no protocol (models/token_judges.py); empty for a parsed score (a point at it).
    distribution: tuple[tuple[float, float], ...] = ()
    source: str = "parsed"  # logits | logprobs | samples | parsed | rules
    mass: float | None = None  # the score tokens' probability among all tokens, when read from probabilities


@dataclass(frozen=True)
class Turn:
    """One round as recorded in scores.parquet; ``error`` set means the judge was excluded."""

    round: int
    judge: str
    score: float | None
    reason: str
    adopted: bool
    error: str | None = None
    distribution: tuple[tuple[float, float], ...] = ()  # what the judge's own verdict came from
    source: str | None = None
    mass: float | None = None


@dataclass(frozen=True)
class Outcome:
    score: float | None
    status: str  # ok | failed
    reason: str  # how the score was reached (ok) or why there is none (failed)
    turns: list[Turn] = field(default_factory=list)

    @property
    def judges_used(self) -> list[str]:
        return list(dict.fromkeys(t.judge for t in self.turns if t.error is None))

    @property
    def scored_rounds(self) -> int:
        return sum(1 for t in self.turns if t.error is None)


class JudgeFailure(RuntimeError):
    """The judge gave no usable score for this sample; ``reason`` is short and countable."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class JunkReply(ValueError):
    pass


class Judge(Protocol):
    name: str

    async def judge(self, item: JudgeItem, previous: Turn | None) -> Verdict:
        """Score ``item``; with ``previous`` (a debate), adopt its score or re-score. Raises JudgeFailure."""
        ...


# ---------------------------------------------------------------------------------------------
# Reply parsing

_SCORE_KEYS = ("score", "clinical_relevance", "relevance", "rating")
_REASON_KEYS = ("reason", "rationale", "explanation", "justification")
_ADOPT_WORDS = {"adopt", "adopted", "agree", "accept", "keep"}
_RESCORE_WORDS = {"rescore", "re-score", "disagree", "revise", "new"}
# Plain-text fallback for models that ignore the JSON instruction ("Score: 0.7 because ...").
_TEXT_SCORE = re.compile(r"\bscore\b\W{0,4}(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_verdict(text: str, previous: Turn | None = None) -> Verdict:
    """A judge's reply -> Verdict; JunkReply (with what was wrong) when it holds no usable score."""
    obj = parse_json_reply(text)
    if obj is None:
        match = _TEXT_SCORE.search(text)
        if match is None:
            raise JunkReply("no JSON object and no 'score: <number>'")
        return Verdict(_unit_score(match.group(1)), _clip_reason(text), adopted=False)
    fields = {str(k).strip().lower(): v for k, v in obj.items()}
    adopted = _adopts(fields) and previous is not None and previous.score is not None
    raw = next((fields[k] for k in _SCORE_KEYS if k in fields), None)
    reason = next((str(fields[k]) for k in _REASON_KEYS if k in fields and fields[k] is not None), "")
    if adopted:
        # An adopting judge takes the previous score as is, whatever number it repeats.
        assert previous is not None and previous.score is not None
        return Verdict(previous.score, _clip_reason(reason) or "adopted", adopted=True)
    if raw is None:
        raise JunkReply(f"JSON without a score (keys {sorted(fields)})")
    return Verdict(_unit_score(raw), _clip_reason(reason), adopted=False)


def _adopts(fields: dict[str, Any]) -> bool:
    decision = fields.get("decision", fields.get("action"))
    if isinstance(decision, str):
        word = decision.strip().lower()
        if word in _ADOPT_WORDS:
            return True
        if word in _RESCORE_WORDS:
            return False
    return fields.get("adopt") is True or fields.get("agree") is True


def _unit_score(raw: Any) -> float:
    if isinstance(raw, bool):
        raise JunkReply(f"score is a boolean ({raw})")
    if isinstance(raw, str):
        text = raw.strip().rstrip("%")
        try:
            value = float(text) / (100.0 if raw.strip().endswith("%") else 1.0)
        except ValueError:
            raise JunkReply(f"score is not a number ({raw[:40]!r})") from None
    elif isinstance(raw, (int, float)):
        value = float(raw)
    else:
        raise JunkReply(f"score is a {type(raw).__name__}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise JunkReply(f"score {value:g} outside [0, 1]")
    return value


def _clip_reason(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Prompts: versioned template files in models/prompts, filled with string.Template ($name).

PROMPT_PARTS = ("first", "followup", "repair")


def prompt_templates(version: str) -> dict[str, string.Template]:
    return {part: prompts.template(f"judge_{part}_{version}") for part in PROMPT_PARTS}


def render_prompt(templates: dict[str, string.Template], item: JudgeItem, previous: Turn | None) -> str:
    values = {"question": item.question, "answer": item.answer, "rejected": item.rejected}
    if previous is None:
        return templates["first"].substitute(values)
    assert previous.score is not None
    return templates["followup"].substitute(
        values,
        previous_judge=previous.judge,
        previous_score=f"{previous.score:.2f}",
        previous_reason=previous.reason or "(none given)",
    )


class PromptedJudge:
    """A judge backed by a language model: prompt, parse, re-ask on junk, exclude after retries."""

    def __init__(self, name: str, templates: dict[str, string.Template], parse_retries: int):
        self.name = name
        self.templates = templates
        self.parse_retries = parse_retries

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    async def judge(self, item: JudgeItem, previous: Turn | None) -> Verdict:
        messages: list[dict[str, Any]] = [user(render_prompt(self.templates, item, previous))]
        problem = ""
        for _ in range(self.parse_retries + 1):
            text = await self.complete(messages)
            try:
                return parse_verdict(text, previous)
            except JunkReply as exc:
                problem = str(exc)
            # Showing the model its own reply and the problem both helps it and changes the
            # request, so a response cache cannot hand back the same junk on the re-ask.
            messages = [
                *messages,
                {"role": "assistant", "content": text},
                user(self.templates["repair"].substitute(problem=problem)),
            ]
        raise JudgeFailure("junk_reply", f"{problem} (after {self.parse_retries + 1} replies)")


class EndpointJudge(PromptedJudge):
    """A model behind an OpenAI-compatible endpoint; transport retries live in the LLMClient."""

    def __init__(
        self,
        name: str,
        client: LLMClient,
        templates: dict[str, string.Template],
        *,
        temperature: float,
        max_tokens: int,
        parse_retries: int,
        json_mode: bool = False,
    ):
        super().__init__(name, templates, parse_retries)
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode  # ask for response_format=json_object (the endpoint declares structured output)

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        try:
            reply = await self.client.chat(
                messages, temperature=self.temperature, max_tokens=self.max_tokens, json_mode=self.json_mode
            )
        except LLMError as exc:
            raise JudgeFailure(f"unavailable_{exc.reason}", exc.detail) from None
        return reply.text


class TransformersJudge(PromptedJudge):
    """A local causal LM (a folder transformers can load); greedy or sampled decoding on CPU/GPU."""

    def __init__(
        self,
        name: str,
        model_path: str,
        templates: dict[str, string.Template],
        *,
        temperature: float,
        max_tokens: int,
        parse_retries: int,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        super().__init__(name, templates, parse_retries)
        from models import precision, resident

        chosen = precision.resolve(device, f"judge {name}")
        torch_dtype = precision.dtype_for(chosen, dtype)
        # Once per worker process (every shard's panel shares it), bf16 on a GPU under auto; one generation at a time.
        key = ("judge", str(Path(model_path).resolve()), str(chosen), str(torch_dtype))
        held = resident.held(key, lambda: _load(model_path, chosen, torch_dtype))
        self.tokenizer, self.model = held.value
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._lock = held.lock

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: list[dict[str, Any]]) -> str:
        import torch

        if self.tokenizer.chat_template:
            encoded = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        else:
            # A base model without a chat template reads the conversation as plain text.
            text = "\n\n".join(str(m["content"]) for m in messages) + "\n\n"
            encoded = self.tokenizer(text, return_tensors="pt")
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        sampling = (
            {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            output = self.model.generate(**encoded, max_new_tokens=self.max_tokens, pad_token_id=pad, **sampling)
        return self.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def _load(model_path: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models import loading

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = loading.from_pretrained(AutoModelForCausalLM, model_path, dtype=dtype)
    return tokenizer, model.to(device).eval()
