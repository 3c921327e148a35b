"""Clinical-relevance judges and the protocols that combine a panel of them.

A judge reads one text pair (question, ground truth, hallucinated answer) and returns a
score in [0, 1] with a reason; in a debate it also sees the previous judge's score and
reason and either adopts that score or re-scores. Three kinds:

- ``RulesJudge``: offline and deterministic, from the error type the hallucinate stage
  recorded and the clinical weight of the words that changed (docs/judges.md has the table);
- ``EndpointJudge``: any OpenAI-compatible server (vLLM, llama.cpp, OpenAI) via models.llm;
- ``TransformersJudge``: a local causal LM folder.

LLM replies are parsed defensively; a judge that still answers junk (or is unreachable)
after its retries is excluded for that sample, and the exclusion is recorded as a round.
"""

from __future__ import annotations

import asyncio
import difflib
import math
import os
import re
import string
import threading
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, AsyncIterator, Protocol, Sequence

from models.llm import LLMClient, LLMError, parse_json_reply, user
from tasks.config import JudgeConfig

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


@dataclass(frozen=True)
class Turn:
    """One round as recorded in scores.parquet; ``error`` set means the judge was excluded."""

    round: int
    judge: str
    score: float | None
    reason: str
    adopted: bool
    error: str | None = None


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
    folder = resources.files("models.prompts")
    templates = {}
    for part in PROMPT_PARTS:
        path = folder / f"judge_{part}_{version}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"judge prompt version {version!r}: missing models/prompts/judge_{part}_{version}.txt")
        templates[part] = string.Template(path.read_text())
    return templates


def all_prompt_texts() -> dict[str, str]:
    """Every template file's text: part of the score stage's code identity."""
    return {p.name: p.read_text() for p in sorted(resources.files("models.prompts").iterdir(), key=lambda p: p.name) if p.name.endswith(".txt")}


def render_prompt(templates: dict[str, string.Template], item: JudgeItem, previous: Turn | None) -> str:
    values = {"question": item.question, "answer": item.answer, "rejected": item.rejected}
    if previous is None:
        return templates["first"].substitute(values)
    assert previous.score is not None
    return templates["followup"].substitute(
        values, previous_judge=previous.judge, previous_score=f"{previous.score:.2f}", previous_reason=previous.reason or "(none given)"
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

    def __init__(self, name: str, client: LLMClient, templates: dict[str, string.Template], *, temperature: float, max_tokens: int, parse_retries: int):
        super().__init__(name, templates, parse_retries)
        self.client = client
        self.temperature = temperature
        self.max_tokens = max_tokens

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        try:
            reply = await self.client.chat(messages, temperature=self.temperature, max_tokens=self.max_tokens)
        except LLMError as exc:
            raise JudgeFailure(f"unavailable_{exc.reason}", exc.detail) from None
        return reply.text


class TransformersJudge(PromptedJudge):
    """A local causal LM (a folder transformers can load); greedy or sampled decoding on CPU/GPU."""

    def __init__(self, name: str, model_path: str, templates: dict[str, string.Template], *, temperature: float, max_tokens: int, parse_retries: int):
        super().__init__(name, templates, parse_retries)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path)
        self.model.eval()
        self.temperature = temperature
        self.max_tokens = max_tokens
        # One model instance serves every concurrent sample: generate one at a time.
        self._lock = threading.Lock()

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        return await asyncio.to_thread(self._generate, messages)

    def _generate(self, messages: list[dict[str, Any]]) -> str:
        import torch

        if self.tokenizer.chat_template:
            encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        else:
            # A base model without a chat template reads the conversation as plain text.
            text = "\n\n".join(str(m["content"]) for m in messages) + "\n\n"
            encoded = self.tokenizer(text, return_tensors="pt")
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self._lock, torch.no_grad():
            output = self.model.generate(**encoded, max_new_tokens=self.max_tokens, pad_token_id=pad, **sampling)
        return self.tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# The rules judge: error type x clinical weight of what changed (table in docs/judges.md).

# Base relevance of each error type the rules hallucination backend records
# (tasks/clinical_rules.py ERROR_TYPES).
ERROR_TYPE_WEIGHTS: dict[str, float] = {
    "negation": 0.90,
    "yes_no_flip": 0.90,
    "normality_flip": 0.85,
    "laterality": 0.85,
    "finding_substitution": 0.85,
    "organ_swap": 0.70,
    "progression": 0.60,
    "size_count": 0.55,
    "modality_swap": 0.55,
    "severity": 0.45,
    "plane_swap": 0.35,
}
UNKNOWN_ERROR_TYPE_WEIGHT = 0.60  # LLM-selected or rewritten hallucinations carry no type
TYPE_SHARE = 0.5  # score = TYPE_SHARE * type weight + (1 - TYPE_SHARE) * change weight

TERM_CLASSES: dict[str, tuple[float, frozenset[str]]] = {
    "critical_finding": (1.00, frozenset("""
        pneumothorax hemorrhage haemorrhage hematoma haematoma bleed bleeding fracture fractures mass masses tumor tumors
        tumour tumours malignancy malignant cancer carcinoma metastasis metastases metastatic pneumonia effusion effusions
        embolism embolus infarct infarction ischemia ischaemia stroke aneurysm dissection obstruction perforation
        pneumoperitoneum edema oedema cardiomegaly nodule nodules lesion lesions consolidation abscess thrombus thrombosis
        herniation appendicitis cholecystitis tuberculosis lymphoma""".split())),
    "finding": (0.80, frozenset("""
        atelectasis opacity opacities infiltrate infiltrates scarring scar granuloma granulomas calcification calcified
        emphysema fibrosis cyst cysts stone stones calculus calculi spondylosis degenerative osteophytes hyperinflation
        thickening enlargement enlarged widened hyperinflated hyperexpanded collapse congestion fluid air gas dilation dilated
        stenosis atrophy""".split())),
    "laterality": (0.85, frozenset("left right bilateral bilaterally unilateral ipsilateral contralateral left-sided right-sided bibasilar".split())),
    "organ": (0.70, frozenset("""
        lung lungs liver heart kidney kidneys spleen brain pancreas gallbladder bladder stomach colon bowel intestine
        aorta trachea esophagus oesophagus diaphragm mediastinum pleura spine rib ribs bone bones chest abdomen pelvis
        head neck skull thyroid prostate uterus ovary breast adrenal lobe hilum hilar cardiac pulmonary hepatic renal""".split())),
    "modality": (0.60, frozenset("ct mri mr x-ray xray radiograph ultrasound sonography pet t1 t2 flair dwi contrast".split())),
    "progression": (0.60, frozenset("""
        increased decreased improved worsened improving worsening unchanged stable enlarging resolved persistent new chronic
        acute""".split())),
    "count": (0.55, frozenset("one two three four five six seven eight nine ten single multiple several numerous".split())),
    "size_severity": (0.40, frozenset("""
        small large tiny huge mild moderate severe minimal marked trace slight extensive diffuse focal minor major
        normal abnormal mildly markedly moderately slightly minimally subtle massive borderline""".split())),
    "plane": (0.35, frozenset("axial coronal sagittal transverse pa ap lateral".split())),
}
POLARITY_TERMS = frozenset("no not without absent negative none yes positive present".split())
POLARITY_FLOOR = 0.50  # a flipped negation weighs at least this, more when it flips a finding
OTHER_WEIGHT = 0.20
CONTEXT_WINDOW = 6  # tokens either side of a change that name what a negation flips

_TOKEN = re.compile(r"[a-z0-9]+(?:[-.][a-z0-9]+)*")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def term_class(token: str) -> tuple[str, float]:
    if token in POLARITY_TERMS:
        return "polarity", POLARITY_FLOOR
    for name, (weight, words) in TERM_CLASSES.items():
        if token in words:
            return name, weight
    if token.replace(".", "", 1).isdigit():
        return "count", TERM_CLASSES["count"][0]
    return "other", OTHER_WEIGHT


def _finding_weight(words: Sequence[str]) -> tuple[float, str | None]:
    best, which = 0.0, None
    for word in words:
        name, weight = term_class(word)
        if name in ("critical_finding", "finding") and weight > best:
            best, which = weight, word
    return best, which


def change_weight(item: JudgeItem) -> tuple[float, str]:
    """Clinical weight of the words that differ between ground truth and rejected, with why."""
    truth, wrong = tokens(item.answer), tokens(item.rejected)
    question = tokens(item.question)
    best, why = -1.0, ""
    matcher = difflib.SequenceMatcher(a=truth, b=wrong, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        for side, start, end, words in (("ground truth", a0, a1, truth), ("rejected", b0, b1, wrong)):
            for token in words[start:end]:
                name, weight = term_class(token)
                note = f"{name} '{token}' ({side})"
                if name == "polarity":
                    # A negation or yes/no weighs what it flips: the finding nearby, or the one
                    # asked about for short answers.
                    context = list(words[max(0, start - CONTEXT_WINDOW) : end + CONTEXT_WINDOW])
                    if len(truth) <= 3:
                        context += question
                    flipped, finding = _finding_weight(context)
                    if flipped > weight:
                        weight, note = flipped, f"polarity '{token}' flips '{finding}'"
                if weight > best:
                    best, why = weight, note
    if best < 0:
        return 0.0, "no clinical content changed"
    return best, why


def rules_score(item: JudgeItem) -> Verdict:
    if tokens(item.answer) == tokens(item.rejected):
        return Verdict(0.0, "rejected answer says the same as the ground truth")
    type_weight = ERROR_TYPE_WEIGHTS.get(item.error_type or "", UNKNOWN_ERROR_TYPE_WEIGHT)
    weight, why = change_weight(item)
    score = round(TYPE_SHARE * type_weight + (1 - TYPE_SHARE) * weight, 4)
    kind = item.error_type or "untyped error"
    return Verdict(score, f"{kind} ({type_weight:.2f}); largest change: {why} ({weight:.2f})")


class RulesJudge:
    """Deterministic, offline: re-scores with its own rule score; the debate's tolerance decides agreement."""

    def __init__(self, name: str = "rules"):
        self.name = name

    async def judge(self, item: JudgeItem, previous: Turn | None) -> Verdict:
        return rules_score(item)


# ---------------------------------------------------------------------------------------------
# Protocols


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
        turn = Turn(round_no, judge.name, score, verdict.reason, adopted)
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
        Turn(i + 1, j.name, None, str(r), False, error=r.reason) if isinstance(r, JudgeFailure) else Turn(i + 1, j.name, r.score, r.reason, False)
        for i, (j, r) in enumerate(zip(panel, results))
    ]
    scores = [t.score for t in turns if t.score is not None]
    if not scores:
        return Outcome(None, "failed", "no_judge_answered", turns)
    return Outcome(round(sum(scores) / len(scores), 6), "ok", "mean", turns)


@asynccontextmanager
async def open_panel(configs: Sequence[JudgeConfig], prompt_version: str, cache_dir: str | os.PathLike[str] | None) -> AsyncIterator[list[Judge]]:
    """The configured judges, ready to use; endpoint clients are closed on exit.

    Misconfiguration (unknown prompt version, missing API key variable, unloadable model
    folder) raises here, before any sample is judged.
    """
    templates = prompt_templates(prompt_version) if any(c.kind != "rules" for c in configs) else {}
    async with AsyncExitStack() as stack:
        panel: list[Judge] = []
        for config in configs:
            if config.kind == "rules":
                panel.append(RulesJudge(config.name))
            elif config.kind == "endpoint":
                assert config.endpoint is not None
                client = await stack.enter_async_context(LLMClient(config.endpoint, cache_dir))
                panel.append(EndpointJudge(config.name, client, templates, temperature=config.temperature, max_tokens=config.max_tokens, parse_retries=config.parse_retries))
            else:
                assert config.model_path is not None
                panel.append(TransformersJudge(config.name, config.model_path, templates, temperature=config.temperature, max_tokens=config.max_tokens, parse_retries=config.parse_retries))
        yield panel
