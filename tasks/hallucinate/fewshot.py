"""The ``llm`` backend's few-shot plain-text protocol, for endpoints without structured output
(small local models: SmolLM2-135M through ``transformers serve`` gave 0 of 23 usable JSON
replies and 22 of 23 usable answers this way).

The examples of the sample's answer kind (closed yes/no, short open, report) are real
user/assistant turns - "Question / Correct answer / Wrong answer:" then the bare wrong answer -
and the sample is the last user turn: the model only has to continue the pattern. The first
answer is greedy; an unusable one (the length guard, the same answer) is asked again sampled at
``temperature`` with a new seed (a new request, never a cache hit on the old one). The reply's
first non-empty line is the answer, a repeated "Wrong answer:" label and quotes removed. The
protocol names no error type, so the row's is read from what changed (``error_type_of``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models import llm as llm_api
from models import prompts
from models.rules_judge import term_class, tokens
from tasks.config import HallucinateConfig
from tasks.hallucinate.clinical_rules import normalized
from tasks.hallucinate.rows import rejection_problem

LABELS = ("wrong answer:", "answer:", "a:")
# A changed word's class (models.rules_judge) -> the error type it makes, strongest first.
CLASS_ERROR_TYPES = (
    ("laterality", "laterality"),
    ("critical_finding", "finding_substitution"),
    ("finding", "finding_substitution"),
    ("organ", "organ_swap"),
    ("modality", "modality_swap"),
    ("progression", "progression"),
    ("count", "size_count"),
    ("size_severity", "severity"),
    ("plane", "plane_swap"),
)


def answer_kind(sample: Mapping[str, Any]) -> str:
    if sample["task"] == "report":
        return "report"
    return "closed" if normalized(sample["answer"]) in ("yes", "no") else "open"


def examples_for(kind: str, name: str) -> list[tuple[str, str, str]]:
    return [(q, a, w) for k, q, a, w in prompts.examples(name, 4) if k == kind]


def messages(sample: Mapping[str, Any], config: HallucinateConfig) -> list[dict[str, Any]]:
    system, turn = prompts.chat(config.fewshot_prompt)
    found = [llm_api.system(system)]
    for question, answer, wrong in examples_for(answer_kind(sample), config.fewshot_examples):
        found += [
            llm_api.user(turn.substitute(question=question, answer=answer)),
            {"role": "assistant", "content": wrong},
        ]
    images = [sample["image_path"]] if config.send_images else []
    found.append(llm_api.user(turn.substitute(question=sample["question"], answer=sample["answer"].strip()), images))
    return found


def clean(reply: str) -> str:
    """The answer in a reply: its first non-empty line, without a repeated label or quotes."""
    for line in reply.splitlines():
        line = line.strip()
        for label in LABELS:
            if line.lower().startswith(label):
                line = line[len(label) :].strip()
        line = line.strip("\"'` ").strip()
        if line:
            return line
    return ""


def error_type_of(question: str, answer: str, rejected: str) -> str:
    """What a rewrite changed, from the clinical class of the words that differ (models.rules_judge)."""
    truth, wrong = normalized(answer), normalized(rejected)
    if {truth, wrong} == {"yes", "no"}:
        return "yes_no_flip"
    before, after = tokens(answer), tokens(rejected)
    changed = {t for t in before if t not in after} | {t for t in after if t not in before}
    classes = {term_class(t)[0] for t in changed}
    if "polarity" in classes:
        return "negation"
    return next((error_type for name, error_type in CLASS_ERROR_TYPES if name in classes), "other")


async def inject(
    client: llm_api.LLMClient, sample: Mapping[str, Any], config: HallucinateConfig, max_chars: int
) -> tuple[dict[str, Any], int]:
    """A wrong answer by the few-shot protocol: ({"rejected", "error_type"} or {"problem"}, attempts)."""
    turns = messages(sample, config)
    problem = "no_attempt"
    for attempt in range(1, config.max_attempts + 1):
        greedy = attempt == 1
        reply = await client.chat(
            turns,
            temperature=0.0 if greedy else config.temperature,
            max_tokens=max_chars // 3 + 8,  # a wrong answer of the right length, and a little more
            seed=None if greedy else attempt - 1,
        )
        rejected = clean(reply.text)
        problem = rejection_problem(rejected, sample["answer"], config)
        if problem is None:
            error_type = error_type_of(sample["question"], sample["answer"], rejected)
            return {"rejected": rejected, "error_type": error_type}, attempt
    return {"problem": problem}, config.max_attempts
