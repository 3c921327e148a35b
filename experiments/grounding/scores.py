"""The grounding experiment's measures on one model, without Prefect (measure.py stores them; gpu.py
runs them on a lent GPU).

For a split's closed yes/no questions: greedy accuracy, the share of greedy answers that are
neither yes nor no, and forced-choice accuracy (the right answer has the higher log-probability
of the two). The **counterfactual** twins: every presence question about an image with a lesion,
asked again about the same image with the lesion inpainted away (a perturbation no training pair
uses), whose right answer is "no". Counterfactual accuracy counts a question right only when the
model is right on both the image and its twin: a model that answers the same whatever the image
shows scores 0. On held-out pairs: mean log p(chosen), log p(rejected) and their margin, per pair
type (the chosen log-prob before and after training is the displacement).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.data import is_presence
from tasks.imaging import inpaint, load_array, save_array

YES_NO = ("yes", "no")


def first_word(text: str) -> str:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


def closed_questions(samples: Sequence[Mapping[str, Any]], split: str) -> list[Mapping[str, Any]]:
    return [
        s
        for s in samples
        if s["split"] == split and s["answer_type"] == "closed" and s["answer"].strip().lower() in YES_NO
    ]


def lesion_removed(sample: Mapping[str, Any], grow: int) -> np.ndarray:
    """The sample's image with every box inpainted away."""
    pixels = load_array(sample["image_path"])
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in sample["boxes"]:
        mask[max(int(y0), 0) : int(y1), max(int(x0), 0) : int(x1)] = True
    return inpaint(pixels, mask, grow=grow)


def twins(samples: Sequence[Mapping[str, Any]], folder: Path, grow: int) -> list[dict[str, Any]]:
    """The counterfactual twin of every presence question whose image has a lesion (answer yes)."""
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for sample in samples:
        if not (is_presence(sample["question"]) and sample["boxes"] and sample["answer"].strip().lower() == "yes"):
            continue
        path = folder / f"{sample['sample_id'].replace(':', '_')}.png"
        if not path.is_file():
            save_array(lesion_removed(sample, grow), path)
        found.append({**sample, "image_path": str(path), "answer": "no", "original": sample["sample_id"]})
    return found


def greedy(model: Any, samples: Sequence[Mapping[str, Any]], batch_size: int) -> dict[str, str]:
    """First word of each sample's greedy answer, by sample id."""
    from models import vlm

    settings = vlm.GenerationSettings(max_new_tokens=3, batch_size=batch_size)
    answers = vlm.generate(model, [s["question"] for s in samples], [s["image_path"] for s in samples], settings)
    return {s["sample_id"]: first_word(a[0]) for s, a in zip(samples, answers)}


def forced(model: Any, samples: Sequence[Mapping[str, Any]], batch_size: int) -> dict[str, bool]:
    """Whether the right answer has the higher log-probability of yes and no, by sample id."""
    from models import vlm

    questions = [s["question"] for s in samples for _ in YES_NO]
    images = [s["image_path"] for s in samples for _ in YES_NO]
    logps = vlm.score_answers(model, questions, list(YES_NO) * len(samples), images, batch_size)
    right = {}
    for index, sample in enumerate(samples):
        yes, no = logps[2 * index], logps[2 * index + 1]
        right[sample["sample_id"]] = (yes > no) == (sample["answer"].strip().lower() == "yes")
    return right


def split_measures(
    model: Any,
    samples: Sequence[Mapping[str, Any]],
    split: str,
    folder: Path,
    grow: int,
    batch_size: int,
    greedy_answers: Mapping[str, str] | None = None,
) -> dict[str, float]:
    """Every measure on ``split``'s closed questions and their twins; ``greedy_answers`` (first
    words by sample id, e.g. from the evaluate flow) saves generating them again."""
    closed = closed_questions(samples, split)
    if not closed:
        raise ValueError(f"no closed yes/no question in split {split!r}")
    twin_rows = twins(closed, folder, grow)
    answers = dict(greedy_answers) if greedy_answers is not None else greedy(model, closed, batch_size)
    missing = [s for s in closed if s["sample_id"] not in answers]
    if missing:
        answers.update(greedy(model, missing, batch_size))
    twin_ids = [{**t, "sample_id": f"{t['sample_id']}#twin"} for t in twin_rows]
    twin_answers = greedy(model, twin_ids, batch_size) if twin_ids else {}
    right = forced(model, [*closed, *twin_ids], batch_size)

    def truth(sample: Mapping[str, Any]) -> str:
        return sample["answer"].strip().lower()

    greedy_right = [answers[s["sample_id"]] == truth(s) for s in closed]
    pairs_greedy = [answers[t["original"]] == "yes" and twin_answers[t["sample_id"]] == "no" for t in twin_ids]
    pairs_forced = [right[t["original"]] and right[t["sample_id"]] for t in twin_ids]
    return {
        "closed_accuracy": float(np.mean(greedy_right)),
        "off_answers": float(np.mean([answers[s["sample_id"]] not in YES_NO for s in closed])),
        "forced_choice_accuracy": float(np.mean([right[s["sample_id"]] for s in closed])),
        "counterfactual_accuracy": float(np.mean(pairs_greedy)) if twin_ids else float("nan"),
        "counterfactual_forced": float(np.mean(pairs_forced)) if twin_ids else float("nan"),
        "twin_accuracy": float(np.mean([twin_answers[t["sample_id"]] == "no" for t in twin_ids]))
        if twin_ids
        else float("nan"),
        "closed_questions": float(len(closed)),
        "counterfactual_pairs": float(len(twin_ids)),
    }


def pair_logps(model: Any, pairs: Sequence[Mapping[str, Any]], batch_size: int) -> dict[str, float]:
    """Mean log p(chosen), log p(rejected) and margin per pair type (text: ground truth vs the
    hallucinated answer; visual: the answer on the real vs the lesion-noised image)."""
    from models import vlm

    questions = [p["prompt"] for p in pairs for _ in (0, 1)]
    answers = [p[side] for p in pairs for side in ("chosen", "rejected")]
    images = [p[f"{side}_image"] for p in pairs for side in ("chosen", "rejected")]
    logps = vlm.score_answers(model, questions, answers, images, batch_size)
    result: dict[str, float] = {}
    for kind in ("text", "visual"):
        index = [i for i, p in enumerate(pairs) if p["pair_type"] == kind]
        chosen = np.array([logps[2 * i] for i in index])
        rejected = np.array([logps[2 * i + 1] for i in index])
        result[f"{kind}_chosen_logp"] = float(chosen.mean()) if index else float("nan")
        result[f"{kind}_rejected_logp"] = float(rejected.mean()) if index else float("nan")
        result[f"{kind}_margin"] = float((chosen - rejected).mean()) if index else float("nan")
        result[f"{kind}_margin_pairs"] = float(len(index))
    return result
