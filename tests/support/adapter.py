"""A LoRA adapter really trained for a few steps on the tiny LLaVA, stored as a `train` artifact.

Plain peft + an optimizer on the real model classes, so evaluation tests do not depend on
the DPO trainer; the artifact holds what a training run saves (a peft adapter folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from models import vlm as vlms
from tasks.config import StageConfig
from tasks.store import ArtifactStore, Manifest, content_hash


def train_lora(model_path: Path, out: Path, image: Path, answer: str, steps: int = 12, lr: float = 1e-2) -> Path:
    """Fit LoRA to say ``answer``; writes the adapter to ``out``.

    lm_head is adapted too: a random tiny model's final norm keeps its hidden states at unit
    scale, so without it a few steps cannot move the near-uniform output distribution.
    """
    loaded = vlms.load(model_path, device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(
        loaded.model,
        LoraConfig(r=8, lora_alpha=16, target_modules=r".*(language_model.*\.(q_proj|v_proj|down_proj)|lm_head)"),
    )
    question = "Is the lung healthy?"
    text = loaded.processor.apply_chat_template(vlms.messages(question, answer), tokenize=False)
    batch = loaded.processor(text=[text], images=[vlms.open_image(image)], return_tensors="pt")
    prompt = loaded.processor(
        text=[vlms.prompt(loaded.processor, question)], images=[vlms.open_image(image)], return_tensors="pt"
    )
    labels = batch["input_ids"].clone()
    labels[:, : prompt["input_ids"].shape[1]] = -100  # learn the answer, not the prompt and image tokens
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(out)
    return out


def train_artifact(store: ArtifactStore, model_path: Path, image: Path, answer: str) -> Manifest:
    def build(out: Path) -> dict[str, float]:
        train_lora(model_path, out / "adapter", image, answer)
        return {"steps": 12}

    return store.run("train", content_hash(str(model_path), answer), StageConfig(), {}, build)
