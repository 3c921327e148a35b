"""Judges that score from the probabilities of score tokens (G-Eval): the ``yesno`` protocol.

The judge sees calibration examples as user/assistant turns ("Question / Correct answer /
Model answer" -> "yes" or "no": is the mistake serious?), then the pair to judge. Its score is
the probability-weighted mean over the score tokens at the start of the reply,
``P(yes) / (P(yes) + P(no))`` - a number with as many values as the model has shades of
doubt, where a parsed reply has two. SmolLM2-135M judged this way: 55 pairs, score std 0.155,
Spearman 0.51 against the rules judge; a parsed 0-1 JSON score gave 0.5 for every pair.

- ``transformers`` judges read the logits directly (``LogitScorer``, in-process): always
  probabilities. The few-shot prefix (system + examples) is run once and its KV cache reused
  for every pair (8x faster, the same numbers).
- ``endpoint`` judges read ``top_logprobs`` when the endpoint declares them
  (``capabilities.logprobs``); otherwise they parse the reply's yes/no: greedy (two values), or
  the mean of ``samples`` sampled replies (samples + 1 values).
- ``orders``: a small model is sensitive to the order of its examples; the distributions of
  that many orders (the file's, then seeded shuffles) are averaged.

Every verdict keeps the distribution it came from (``Verdict.distribution``, source, and the
probability mass the score tokens had). These judges are stateless: in a debate they re-score
(a follow-up round costs nothing: memoized), so adoption comes from ``agreement_tolerance``.
"""

from __future__ import annotations

import asyncio
import copy
import math
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import prompts
from models.judges import JudgeFailure, JudgeItem, Turn, Verdict
from models.llm import LLMClient, LLMError, system, user

# The score tokens and their values: a reply starting "yes" says the mistake is serious.
SCORE_WORDS: dict[str, float] = {"yes": 1.0, "no": 0.0}
MAX_TOKENS = 3  # "yes" / "no" and an end token: nothing more is needed, nothing more is paid
TOP_LOGPROBS = 20
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Distribution:
    """P(score value) over the score tokens (renormalized), how it was read, and the mass the
    score tokens had among all tokens (None when it was not read from probabilities)."""

    probs: tuple[tuple[float, float], ...]  # (value, p)
    source: str  # logits | logprobs | samples | parsed
    mass: float | None = None

    @property
    def score(self) -> float:
        return sum(value * p for value, p in self.probs)


def examples(version: str) -> list[tuple[str, str, str, str]]:
    found = prompts.examples(f"judge_examples_{version}", 4)
    bad = [label for *_, label in found if label.lower() not in SCORE_WORDS]
    if bad:
        raise ValueError(f"models/prompts/judge_examples_{version}.txt: labels must be yes or no, got {bad}")
    return found  # type: ignore[return-value]


def example_orders(shots: Sequence[tuple[str, ...]], orders: int) -> list[list[tuple[str, ...]]]:
    """``orders`` orders of the examples: the file's, then shuffles seeded 1, 2, ..."""
    found = [list(shots)]
    for seed in range(1, orders):
        shuffled = list(shots)
        random.Random(seed).shuffle(shuffled)
        found.append(shuffled)
    return found


def messages(version: str, shots: Sequence[tuple[str, ...]], item: JudgeItem) -> list[dict[str, Any]]:
    instruction, turn = prompts.chat(f"judge_yesno_{version}")
    found = [system(instruction)]
    for question, answer, rejected, label in shots:
        found += [
            user(turn.substitute(question=question, answer=answer, rejected=rejected)),
            {"role": "assistant", "content": label.lower()},
        ]
    return [*found, user(turn.substitute(question=item.question, answer=item.answer, rejected=item.rejected))]


def mean(distributions: Sequence[Distribution]) -> Distribution:
    values = sorted({value for d in distributions for value, _ in d.probs}, reverse=True)
    probs = tuple((v, sum(dict(d.probs).get(v, 0.0) for d in distributions) / len(distributions)) for v in values)
    masses = [d.mass for d in distributions if d.mass is not None]
    return Distribution(probs, distributions[0].source, sum(masses) / len(masses) if masses else None)


def from_mass(mass_by_value: dict[float, float], source: str, total: float | None) -> Distribution:
    total_mass = sum(mass_by_value.values())
    if not math.isfinite(total_mass):  # NaN or inf logits: no score, never a NaN weight
        raise JudgeFailure("non_finite_scores", f"probability on {sorted(SCORE_WORDS)} is {total_mass}")
    if total_mass <= 0:
        raise JudgeFailure("no_score_tokens", f"no probability on {sorted(SCORE_WORDS)}")
    probs = tuple((value, p / total_mass) for value, p in sorted(mass_by_value.items(), reverse=True))
    return Distribution(probs, source, total_mass if total is None else total)


def parsed(text: str) -> float | None:
    match = _WORD.search(text)
    return None if match is None else SCORE_WORDS[match.group(1).lower()]


class TokenJudge:
    """The yes/no protocol over a reader (logits in-process, or an endpoint)."""

    def __init__(self, name: str, reader: Any, version: str, orders: int):
        self.name = name
        self.reader = reader
        self.orders = example_orders(examples(version), orders)
        self.version = version
        self._memo: dict[tuple[str, str, str], Verdict] = {}

    async def judge(self, item: JudgeItem, previous: Turn | None) -> Verdict:
        key = (item.question, item.answer, item.rejected)
        if key not in self._memo:
            found = [await self.reader.read(messages(self.version, shots, item)) for shots in self.orders]
            dist = mean(found)
            score = round(dist.score, 6)
            over = f" over {len(found)} example orders" if len(found) > 1 else ""
            mass = f", score tokens' mass {dist.mass:.2f}" if dist.mass is not None else ""
            reason = f"P(serious) = {score:.3f} ({dist.source}{over}{mass})"
            self._memo[key] = Verdict(score, reason, distribution=dist.probs, source=dist.source, mass=dist.mass)
        return self._memo[key]


class EndpointReader:
    """Score-token probabilities from an endpoint: its top_logprobs where declared, else parsed replies."""

    def __init__(self, client: LLMClient, *, logprobs: bool, samples: int, temperature: float, parse_retries: int):
        self.client = client
        self.logprobs = logprobs
        self.samples = samples
        self.temperature = temperature
        self.parse_retries = parse_retries

    async def _chat(self, turns: list[dict[str, Any]], **kwargs: Any) -> Any:
        try:
            return await self.client.chat(turns, max_tokens=MAX_TOKENS, **kwargs)
        except LLMError as exc:
            raise JudgeFailure(f"unavailable_{exc.reason}", exc.detail) from None

    async def read(self, turns: list[dict[str, Any]]) -> Distribution:
        if self.logprobs and "logprobs" not in self.client.refused:
            reply = await self._chat(turns, temperature=0.0, logprobs=TOP_LOGPROBS)
            if reply.top_logprobs:
                mass: dict[float, float] = {}
                for token, logprob in reply.top_logprobs[0]:
                    value = SCORE_WORDS.get(token.strip().lower())
                    if value is not None:
                        mass[value] = mass.get(value, 0.0) + math.exp(logprob)
                if mass:
                    return from_mass(mass, "logprobs", None)
            if (value := parsed(reply.text)) is not None:
                return Distribution(((value, 1.0),), "parsed")
        if self.samples > 1:
            replies = [
                await self._chat(turns, temperature=self.temperature, seed=seed) for seed in range(1, self.samples + 1)
            ]
            values = [v for v in (parsed(r.text) for r in replies) if v is not None]
            if values:
                counted = {v: values.count(v) / len(values) for v in sorted(set(values), reverse=True)}
                return Distribution(tuple(counted.items()), "samples")
            raise JudgeFailure("junk_reply", f"no yes/no in {len(replies)} replies: {replies[0].text[:60]!r}")
        reply = await self._chat(turns, temperature=0.0)
        for attempt in range(1, self.parse_retries + 1):
            if parsed(reply.text) is not None:
                break
            reply = await self._chat(turns, temperature=max(self.temperature, 0.7), seed=attempt)
        value = parsed(reply.text)
        if value is None:
            raise JudgeFailure("junk_reply", f"no yes/no in the reply: {reply.text[:60]!r}")
        return Distribution(((value, 1.0),), "parsed")


def held_scorer(folder: str | Path, device: str, dtype: str, name: str) -> LogitScorer:
    """The process's scorer for this folder on the device ``device`` resolves to, in ``dtype``
    (auto: bf16 on a GPU, fp32 on the CPU): loaded by the first panel that asks, then shared by
    every shard and panel of the worker (``models.resident``)."""
    from models import precision, resident

    chosen = precision.resolve(device, f"judge {name}")
    torch_dtype = precision.dtype_for(chosen, dtype)
    path = str(Path(folder).resolve())
    key = ("token judge", path, str(chosen), str(torch_dtype))
    return resident.held(key, lambda: LogitScorer(path, chosen, torch_dtype)).value


class LogitScorer:
    """A local causal LM reading the score tokens' probabilities at the start of its reply.

    One forward pass at a time. Each example order's prefix is run once and its KV cache copied
    for every pair.
    """

    def __init__(self, folder: str, device: Any, dtype: Any):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from models import loading

        self.torch = torch
        self.device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = loading.from_pretrained(AutoModelForCausalLM, folder, dtype=dtype).to(device).eval()
        except Exception as exc:  # noqa: BLE001 - many kinds; the message names the folder
            raise RuntimeError(f"transformers judge: cannot load {folder}: {type(exc).__name__}: {exc}") from exc
        self.token_values = self._score_token_ids()
        self._prefixes: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def _score_token_ids(self) -> dict[int, float]:
        """Every single-token spelling of each score word (yes, Yes, " yes", ...) -> its value."""
        found: dict[int, float] = {}
        for word, value in SCORE_WORDS.items():
            for spelling in (word, word.capitalize(), " " + word, " " + word.capitalize()):
                ids = self.tokenizer.encode(spelling, add_special_tokens=False)
                if len(ids) == 1 and ids[0] != self.tokenizer.unk_token_id:
                    found.setdefault(ids[0], value)
        return found

    def text(self, turns: Sequence[dict[str, Any]], prompt: bool) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=prompt)
        return "".join(f"{turn['content']}\n\n" for turn in turns)  # a base model reads a plain transcript

    def read_sync(self, turns: Sequence[dict[str, Any]], threads: int | None) -> Distribution:
        if not self.token_values:
            raise JudgeFailure("no_score_tokens", f"the tokenizer spells none of {sorted(SCORE_WORDS)} as one token")
        torch = self.torch
        full = self.text(turns, prompt=True)
        prefix = self.text(turns[:-1], prompt=False)
        with self._lock, torch.no_grad():
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                logits = self._last_logits(full, prefix if full.startswith(prefix) else "")
            finally:
                torch.set_num_threads(before)
        probs = torch.softmax(logits.float(), dim=-1)
        mass: dict[float, float] = {}
        for token_id, value in self.token_values.items():
            mass[value] = mass.get(value, 0.0) + float(probs[token_id])
        return from_mass(mass, "logits", None)

    def _last_logits(self, full: str, prefix: str) -> Any:
        torch = self.torch
        encode = lambda text: self.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(  # noqa: E731
            self.device
        )
        if not prefix:
            return self.model(input_ids=encode(full)).logits[0, -1]
        if prefix not in self._prefixes:
            ids = encode(prefix)
            self._prefixes[prefix] = (ids, self.model(input_ids=ids, use_cache=True).cache)
        prefix_ids, cache = self._prefixes[prefix]
        suffix = encode(full[len(prefix) :])
        mask = torch.ones(1, prefix_ids.shape[1] + suffix.shape[1], dtype=torch.long, device=self.device)
        out = self.model(input_ids=suffix, cache=copy.deepcopy(cache), attention_mask=mask, use_cache=True)
        return out.logits[0, -1]


class LogitReader:
    def __init__(self, scorer: LogitScorer, threads: int | None):
        self.scorer = scorer
        self.threads = threads

    async def read(self, turns: list[dict[str, Any]]) -> Distribution:
        return await asyncio.to_thread(self.scorer.read_sync, turns, self.threads)
