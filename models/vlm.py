"""Vision-language models from a local path: loading, prompts, batched generation, answer scoring.

The only module that loads and prompts a VLM checkpoint, of any family in ``models.families``
(LLaVA / LLaVA-Med v1.5, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, Gemma 3, Idefics3), each with its
own processor and chat template, through the conventions that module states. The
hallucination stage (sampling candidates), evaluation (greedy answers, forced choice) and
training (model + processor) share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from models import families, loading, precision
from models.families import Family, open_image


@dataclass
class VLM:
    model: PreTrainedModel
    processor: ProcessorMixin
    path: Path
    family: Family

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.device

    def image(self, image: str | Path | Image.Image) -> Image.Image:
        """An image file (or PIL image) as RGB, prepared as the family's training saw it."""
        return self.family.prepare(open_image(image), self.processor)


BOUNDED_BY_PIXELS = ("qwen2_vl", "qwen2_5_vl")


def load(
    path: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    move: bool = True,
    max_pixels: int | None = None,
) -> VLM:
    """Load model + processor from a local folder; never reaches for the hub.

    ``move=False`` leaves the weights where loading put them, for a trainer (or DeepSpeed) to place.
    A checkpoint of a family not in ``models.families`` fails before any weight is read.
    ``max_pixels`` bounds the image size the Qwen families resize to (the checkpoint's own bound
    when lower; None: the checkpoint's); other families have a fixed image-token count.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json - not a transformers checkpoint folder")
    family = families.detect(path)
    device = torch.device(device) if device is not None else precision.resolve("auto", f"VLM {path}")
    dtype = dtype or precision.dtype_for(device)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    if family.name in BOUNDED_BY_PIXELS and max_pixels is not None:
        size = processor.image_processor.size
        if size.longest_edge is None or size.longest_edge > max_pixels:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True, max_pixels=max_pixels)
    model = loading.from_pretrained(AutoModelForImageTextToText, path, dtype=dtype, local_files_only=True)
    model = model.to(device).eval() if move else model
    # Generation appends at the right end of every row, so batches are padded on the left.
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return VLM(model=model, processor=processor, path=path, family=family)


def image_normalization(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(image_mean, image_std) of a checkpoint's image processor, read without loading weights."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    mean, std = processor.image_mean, processor.image_std
    if isinstance(mean, (int, float)):  # one value for every channel
        mean, std = [mean] * 3, [std] * 3
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def messages(question: str, answer: str | None = None, with_image: bool = True) -> list[dict[str, Any]]:
    """One user turn (image + question) and, for training, the assistant's answer."""
    content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": question})
    turns = [{"role": "user", "content": content}]
    if answer is not None:
        turns.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return turns


def prompt(processor: ProcessorMixin, question: str, with_image: bool = True) -> str:
    """The model's own chat template around one question, ready for the answer to follow (BOS once:
    tokenize it with ``add_special_tokens=False``, as ``families.encode`` does)."""
    return families.render(processor, messages(question, with_image=with_image), add_generation_prompt=True)


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # samples per prompt
    seed: int = 0
    batch_size: int = 8


@torch.inference_mode()
def generate(
    vlm: VLM,
    questions: Sequence[str],
    images: Sequence[str | Path | Image.Image],
    settings: GenerationSettings = GenerationSettings(),
) -> list[list[str]]:
    """``settings.n`` decoded answers per (question, image), in input order.

    Sampling is seeded per batch, so the same inputs, settings and batch size give the same
    answers on the same hardware.
    """
    if len(questions) != len(images):
        raise ValueError(f"{len(questions)} questions but {len(images)} images")
    sampling = settings.temperature > 0
    if not sampling and settings.n > 1:
        raise ValueError("greedy decoding gives one answer per prompt: set temperature > 0 for n > 1")
    tokenizer = vlm.tokenizer
    answers: list[list[str]] = []
    for start in range(0, len(questions), settings.batch_size):
        batch_questions = questions[start : start + settings.batch_size]
        batch_images = [vlm.image(i) for i in images[start : start + settings.batch_size]]
        texts = [prompt(vlm.processor, q) for q in batch_questions]
        inputs = families.to_model(families.encode(vlm.processor, texts, batch_images), vlm.model)
        options: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": sampling,
            "num_return_sequences": settings.n,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if sampling:
            options.update(temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed + start)
        else:
            # Checkpoints ship sampling defaults in generation_config; greedy must not warn about or use them.
            options.update(temperature=None, top_p=None, top_k=None)
        output = vlm.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        decoded = [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        answers.extend(decoded[i : i + settings.n] for i in range(0, len(decoded), settings.n))
    return answers


def apply_adapter(vlm: VLM, adapter: str | Path) -> VLM:
    """The model with a saved peft (LoRA) adapter merged in, for inference only.

    Merging costs one pass over the adapted weights and leaves a plain model, so generation
    runs at the base model's speed and through the same code path.
    """
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json - not a saved peft adapter")
    merged = PeftModel.from_pretrained(vlm.model, adapter).merge_and_unload().eval()
    return VLM(model=merged, processor=vlm.processor, path=vlm.path, family=vlm.family)


def answer_logprob(vlm: VLM, question: str, answer: str, image: str | Path | Image.Image) -> float:
    """Summed log-probability of ``answer``'s tokens after the image and question (the
    quantity DPO compares between a chosen and a rejected response)."""
    return answer_logprobs(vlm, question, [answer], image)[0]


def answer_logprobs(vlm: VLM, question: str, answers: Sequence[str], image: str | Path | Image.Image) -> list[float]:
    """``answer_logprob`` of each candidate answer, in one batch."""
    picture = vlm.image(image)
    return score_answers(vlm, [question] * len(answers), list(answers), [picture] * len(answers))


@torch.no_grad()
def score_answers(
    vlm: VLM,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence[str | Path | Image.Image],
    batch_size: int = 32,
) -> list[float]:
    """``answer_logprob`` of every (question, answer, image) row, ``batch_size`` rows per forward,
    on ``teacher_forced`` batches. The collator pads prompts on the left and answers on the right,
    so every answer starts at the same column: the head projects only the positions from there on
    (``logits_to_keep``), not the prompt's, through the whole vocabulary."""
    if not len(questions) == len(answers) == len(images):
        raise ValueError(f"{len(questions)} questions, {len(answers)} answers, {len(images)} images")
    scores: list[float] = []
    for start in range(0, len(questions), batch_size):
        window = slice(start, start + batch_size)
        batch = teacher_forced(vlm, questions[window], answers[window], images[window])
        labels = batch.pop("labels")
        scored = labels != -100
        first = int(scored.any(dim=0).nonzero()[0])  # the answers' common first column
        keep = labels.shape[1] - first + 1
        logits = vlm.model(**batch, logits_to_keep=keep).logits[:, :-1].float()
        targets, mask = labels[:, first:], scored[:, first:]
        token_logps = torch.log_softmax(logits, dim=-1).gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores.extend((token_logps * mask).sum(dim=1).tolist())
    return scores


def teacher_forced(
    vlm: VLM,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence[str | Path | Image.Image],
) -> dict[str, Any]:
    """The batch as SFT builds it (prompt, the image as the family prepares it, answer), labels on
    the answer only: TRL's prompt-completion collator through the ``TemplateProcessor`` the pair
    collator uses, so an answer's tokens (and the prompt's BOS) are exactly those training scored."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(
        families.TemplateProcessor(vlm.processor), completion_only_loss=True
    )
    rows = [
        {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
            "images": [vlm.image(image)],
        }
        for question, answer, image in zip(questions, answers, images)
    ]
    return families.to_model(collator(rows), vlm.model)
