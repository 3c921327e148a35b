from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models import vlm


@pytest.fixture(scope="module")
def loaded(tiny_llava: Path) -> vlm.VLM:
    return vlm.load(tiny_llava, device="cpu")


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(count)]


QUESTIONS = ["Is the lung healthy?", "What modality is used to take this image? Describe it.", "Which organ?"]


def test_greedy_batched_equals_one_by_one(loaded: vlm.VLM):
    settings = vlm.GenerationSettings(max_new_tokens=6, batch_size=3)
    batched = vlm.generate(loaded, QUESTIONS, images(3), settings)
    single = vlm.generate(loaded, QUESTIONS, images(3), vlm.GenerationSettings(max_new_tokens=6, batch_size=1))
    assert [len(a) for a in batched] == [1, 1, 1]
    assert batched == single
    assert all(a[0] for a in batched)


def test_seeded_sampling_gives_n_reproducible_samples(loaded: vlm.VLM, tmp_path: Path):
    paths = []
    for i, image in enumerate(images(2)):
        image.save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    settings = vlm.GenerationSettings(max_new_tokens=8, temperature=1.5, n=4, seed=3)
    first = vlm.generate(loaded, QUESTIONS[:2], paths, settings)
    again = vlm.generate(loaded, QUESTIONS[:2], paths, settings)
    other = vlm.generate(
        loaded, QUESTIONS[:2], paths, vlm.GenerationSettings(max_new_tokens=8, temperature=1.5, n=4, seed=4)
    )
    assert [len(a) for a in first] == [4, 4]
    assert first == again
    assert first != other
    assert len(set(first[0])) > 1


def test_rejects_mismatched_inputs_and_greedy_n(loaded: vlm.VLM, tmp_path: Path):
    with pytest.raises(ValueError, match="2 questions but 1 images"):
        vlm.generate(loaded, QUESTIONS[:2], images(1))
    with pytest.raises(ValueError, match="temperature"):
        vlm.generate(loaded, QUESTIONS[:1], images(1), vlm.GenerationSettings(n=2))
    with pytest.raises(FileNotFoundError, match="config.json"):
        vlm.load(tmp_path)


def test_answer_logprob_scores_the_answer_given_image_and_question(loaded: vlm.VLM):
    first, second = images(2)
    yes = vlm.answer_logprob(loaded, QUESTIONS[0], "yes", first)
    assert yes < 0 and np.isfinite(yes)
    assert vlm.answer_logprob(loaded, QUESTIONS[0], "yes", first) == yes  # no sampling, no state
    assert vlm.answer_logprob(loaded, QUESTIONS[0], "no", first) != yes
    assert vlm.answer_logprob(loaded, QUESTIONS[0], "yes", second) != yes  # the image is read


def test_scoring_rows_together_equals_one_by_one_and_sums_the_answer_tokens(loaded: vlm.VLM):
    import torch

    pictures = images(3)
    answers = ["yes", "No, the lung is not healthy.", "Liver"]
    together = vlm.score_answers(loaded, QUESTIONS, answers, pictures, batch_size=3)
    alone = [vlm.score_answers(loaded, [q], [a], [p])[0] for q, a, p in zip(QUESTIONS, answers, pictures)]
    assert together == pytest.approx(alone, abs=1e-4)
    # The full-vocabulary log-softmax at every answer position, summed by hand (no logits_to_keep).
    processor, model = loaded.processor, loaded.model
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[2]}]}],
        add_generation_prompt=True,
    )
    full = processor.apply_chat_template(
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[2]}]},
            {"role": "assistant", "content": [{"type": "text", "text": answers[2]}]},
        ]
    )
    picture = loaded.image(pictures[2])  # as the family prepares it (LLaVA: padded to square)
    short = processor(text=[prompt], images=[picture], return_tensors="pt")
    batch = processor(text=[full], images=[picture], return_tensors="pt")
    with torch.no_grad():
        logps = torch.log_softmax(model(**batch).logits[0, :-1].float(), dim=-1)
    ids = batch["input_ids"][0]
    start = short["input_ids"].shape[1]
    by_hand = sum(logps[i - 1, ids[i]].item() for i in range(start, len(ids)))
    assert together[2] == pytest.approx(by_hand, abs=1e-3)
