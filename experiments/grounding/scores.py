"""The grounding experiment's measures on one model and split, without Prefect (measure.py stores them).

Primary - the **relocation twin**: an image and its mirror (lesion and distractor moved across the
midline on the same background; data.py) asked "Is the lesion in the left half?"; an item counts only
when both answers are right, greedy and forced choice (the right answer has the higher
log-probability of yes and no). A model answering from the text prior, the background or anything
but the image's objects scores 0 on an item. Secondary: **distractor-removal invariance** (the greedy
answer, and the forced choice, unchanged when the distractor is left out), **quadrant exact match**
on the open question, closed accuracy **split by the gold answer**, the share of greedy answers that
are neither yes nor no, and the mean log p(gold answer) on the closed originals (the report turns it
into displacement against the same seed's SFT model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.grounding.data import CLEAN, MIRROR

YES_NO = ("yes", "no")


def normalized(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed."""
    kept = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())
    return " ".join(kept.split())


def first_word(text: str) -> str:
    words = normalized(text).split()
    return words[0] if words else ""


def native_id(sample: Mapping[str, Any]) -> str:
    """The data set's own id (``grounding:test:test-00003-mirror`` -> ``test-00003-mirror``)."""
    return str(sample["sample_id"]).rsplit(":", 1)[-1]


def items(samples: Sequence[Mapping[str, Any]], split: str) -> dict[str, list[Mapping[str, Any]]]:
    """The split's closed originals, relocation and removal twins, and open questions, by role."""
    rows = [s for s in samples if s["split"] == split]
    roles: dict[str, list[Mapping[str, Any]]] = {"closed": [], MIRROR: [], CLEAN: [], "open": []}
    for row in rows:
        name = native_id(row)
        if name.endswith(f"-{MIRROR}"):
            roles[MIRROR].append(row)
        elif name.endswith(f"-{CLEAN}"):
            roles[CLEAN].append(row)
        elif row["answer_type"] == "closed":
            roles["closed"].append(row)
        else:
            roles["open"].append(row)
    if not roles["closed"] or not roles[MIRROR]:
        raise ValueError(f"split {split!r}: no closed question with a relocation twin (is this the grounding data?)")
    return roles


def greedy(model: Any, samples: Sequence[Mapping[str, Any]], batch_size: int) -> dict[str, str]:
    """Each sample's greedy answer, by sample id."""
    from models import vlm

    settings = vlm.GenerationSettings(max_new_tokens=4, batch_size=batch_size)
    answers = vlm.generate(model, [s["question"] for s in samples], [s["image_path"] for s in samples], settings)
    return {s["sample_id"]: a[0] for s, a in zip(samples, answers)}


def yes_no_logps(model: Any, samples: Sequence[Mapping[str, Any]], batch_size: int) -> dict[str, tuple[float, float]]:
    """(log p(yes), log p(no)) of each closed sample, by sample id."""
    from models import vlm

    questions = [s["question"] for s in samples for _ in YES_NO]
    images = [s["image_path"] for s in samples for _ in YES_NO]
    logps = vlm.score_answers(model, questions, list(YES_NO) * len(samples), images, batch_size)
    return {s["sample_id"]: (logps[2 * i], logps[2 * i + 1]) for i, s in enumerate(samples)}


def split_measures(
    model: Any,
    samples: Sequence[Mapping[str, Any]],
    split: str,
    batch_size: int,
    greedy_answers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Every measure on ``split``; ``greedy_answers`` (by sample id, e.g. the evaluate flow's predictions)
    saves generating them again."""
    roles = items(samples, split)
    asked = [*roles["closed"], *roles[MIRROR], *roles[CLEAN], *roles["open"]]
    answers = dict(greedy_answers or {})
    missing = [s for s in asked if s["sample_id"] not in answers]
    if missing:
        answers.update(greedy(model, missing, batch_size))
    closed = [*roles["closed"], *roles[MIRROR], *roles[CLEAN]]
    return measures_from(roles, answers, yes_no_logps(model, closed, batch_size))


def measures_from(
    roles: Mapping[str, Sequence[Mapping[str, Any]]],
    answers: Mapping[str, str],
    logps: Mapping[str, tuple[float, float]],
) -> dict[str, float]:
    """The measures from greedy answers and yes/no log-probs (pure: tests feed it by hand)."""

    def gold(sample: Mapping[str, Any]) -> str:
        return normalized(sample["answer"])

    def said(sample: Mapping[str, Any]) -> str:
        return first_word(answers[sample["sample_id"]])

    def chose(sample: Mapping[str, Any]) -> str:
        yes, no = logps[sample["sample_id"]]
        return "yes" if yes > no else "no"

    by_id = {native_id(s): s for s in roles["closed"]}

    def original(twin: Mapping[str, Any]) -> Mapping[str, Any]:
        return by_id[native_id(twin).rsplit("-", 1)[0]]

    closed = roles["closed"]
    result: dict[str, float] = {
        "closed_accuracy": mean(said(s) == gold(s) for s in closed),
        "forced_accuracy": mean(chose(s) == gold(s) for s in closed),
        "off_answers": mean(said(s) not in YES_NO for s in closed),
        "relocation_greedy": mean(said(t) == gold(t) and said(original(t)) == gold(original(t)) for t in roles[MIRROR]),
        "relocation_forced": mean(
            chose(t) == gold(t) and chose(original(t)) == gold(original(t)) for t in roles[MIRROR]
        ),
        "removal_invariance": mean(said(t) in YES_NO and said(t) == said(original(t)) for t in roles[CLEAN]),
        "removal_invariance_forced": mean(chose(t) == chose(original(t)) for t in roles[CLEAN]),
        "quadrant_exact": mean(normalized(answers[s["sample_id"]]) == gold(s) for s in roles["open"]),
        "gold_logp": float(np.mean([logps[s["sample_id"]][YES_NO.index(gold(s))] for s in closed])),
        "relocation_items": float(len(roles[MIRROR])),
    }
    for answer in YES_NO:
        mine = [s for s in closed if gold(s) == answer]
        result[f"accuracy_gold_{answer}"] = mean(said(s) == answer for s in mine)
        result[f"forced_gold_{answer}"] = mean(chose(s) == answer for s in mine)
    result["relocation"] = (result["relocation_greedy"] + result["relocation_forced"]) / 2
    return result


def mean(values: Any) -> float:
    found = [float(v) for v in values]
    return float(np.mean(found)) if found else float("nan")
