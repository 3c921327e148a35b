"""Per family: greedy evaluation, target sampling and forced choice run batched on images of mixed sizes."""

import logging
from pathlib import Path

import pytest
import torch

from models import families, vlm
from tasks.config import EvaluateConfig, HallucinateConfig, TargetSamplingConfig
from tasks.evaluate import generate_answers
from tasks.hallucinate.target import sample_target
from tests.support.preference import MIXED_SIZES, QA, write_images
from tests.support.samples import sample_row


def mixed_samples(folder: Path) -> list[dict]:
    """One question per image, the four images of four sizes (different image-token counts)."""
    rows = []
    for index, (size, (question, answer, _)) in enumerate(zip(MIXED_SIZES, QA)):
        clean, _ = write_images(folder, index, size)
        rows.append(sample_row(f"s{index}", Path(clean), question=question, answer=answer, split="test"))
    return rows


def test_greedy_evaluation_runs_one_batch_of_mixed_sizes(loaded_family, tmp_path, caplog):
    samples = mixed_samples(tmp_path)
    config = EvaluateConfig(model=loaded_family.path, max_new_tokens=6, batch_size=4)
    with caplog.at_level(logging.WARNING):
        batched = generate_answers(loaded_family, samples, config)
    assert not [r for r in caplog.records if "retrying per sample" in r.getMessage()]  # the batch path, no fallback
    assert all(error is None and answer is not None for answer, error in batched)
    settings = vlm.GenerationSettings(max_new_tokens=6, batch_size=1)
    alone = [vlm.generate(loaded_family, [s["question"]], [s["image_path"]], settings)[0][0] for s in samples]
    assert [answer for answer, _ in batched] == alone  # left padding changes nothing


def test_target_sampling_runs_one_batch_of_mixed_sizes(loaded_family, tmp_path, caplog):
    samples = mixed_samples(tmp_path)
    target = TargetSamplingConfig(
        model_path=loaded_family.path, num_samples=3, max_new_tokens=5, batch_size=4, temperature=1.5, device="cpu"
    )
    with caplog.at_level(logging.WARNING):
        sampled = sample_target(samples, HallucinateConfig(backend="target", target=target))
    assert not [r for r in caplog.records if "retrying per sample" in r.getMessage()]
    assert [len(candidates) for candidates in sampled] == [3] * len(samples)
    assert all(isinstance(c, str) for candidates in sampled for c in candidates)
    assert len({c for candidates in sampled for c in candidates}) > 1  # sampled, not greedy


def test_forced_choice_scores_candidates_in_one_batch_as_alone(loaded_family, tmp_path):
    clean, noised = write_images(tmp_path, 0, MIXED_SIZES[0])
    candidates = ["Yes.", "No.", "The liver is abnormal."]
    together = vlm.answer_logprobs(loaded_family, QA[1][0], candidates, clean)
    alone = [vlm.answer_logprob(loaded_family, QA[1][0], c, clean) for c in candidates]
    assert together == pytest.approx(alone, abs=1e-4)
    assert all(score < 0 for score in together)
    assert vlm.answer_logprobs(loaded_family, QA[1][0], candidates, noised) != pytest.approx(together, abs=1e-6)


def test_gemma3_needs_one_image_list_per_prompt(tiny_checkpoint, tmp_path):
    """Defect 2: a flat image list fails Gemma 3's processor in any batch of two or more."""
    loaded = vlm.load(tiny_checkpoint("gemma3"), device="cpu")
    images = [vlm.open_image(write_images(tmp_path, i, size)[0]) for i, size in enumerate(MIXED_SIZES[:2])]
    texts = [vlm.prompt(loaded.processor, question) for question, _, _ in QA[:2]]
    with pytest.raises(ValueError, match="<start_of_image> tokens"):
        loaded.processor(text=texts, images=images, padding=True, return_tensors="pt")
    batch = families.encode(loaded.processor, texts, images)
    assert tuple(batch["pixel_values"].shape[:1]) == (2,) and "token_type_ids" in batch
    answers = vlm.generate(loaded, [q for q, _, _ in QA[:2]], images, vlm.GenerationSettings(max_new_tokens=4))
    assert len(answers) == 2 and all(len(a) == 1 for a in answers)
    with torch.no_grad():
        logits = loaded.model(**families.to_model(batch, loaded.model)).logits
    assert torch.isfinite(logits).all()
