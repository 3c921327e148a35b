"""Supervised fine-tuning of a VLM with TRL's SFTTrainer (loss on the answer only).

Which parts learn is explicit (``sft.trainable``): a tiny model's random vision tower
has to be trained for the model to see anything at all, a production checkpoint would
usually train the projector and the language model only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models import families, precision, vlm
from models.progress import quiet_progress
from models.settings import SFTSettings
from models.tiny import build_tiny_llava
from models.trl_checks import score_labelled_positions_only


def base_model(config: SFTSettings, work: Path, texts: Sequence[str]) -> Path:
    if config.model is not None:
        return config.model
    if config.text_model is not None:
        from models.compose import build_llava_on_lm

        return build_llava_on_lm(
            config.text_model,
            work / "composed-base",
            layers=config.text_layers,
            seed=config.tiny_seed,
            image_size=config.tiny_image_size,
            patch_size=config.tiny_patch_size,
        )
    return build_tiny_llava(
        work / "tiny-base",
        seed=config.tiny_seed,
        image_size=config.tiny_image_size,
        patch_size=config.tiny_patch_size,
        hidden_size=config.tiny_hidden_size,
        layers=config.tiny_layers,
        extra_texts=texts,
        vision=config.tiny_vision,
    )


def set_trainable(model: torch.nn.Module, parts: Sequence[str]) -> int:
    """Freeze everything but ``parts`` (``sft.trainable`` names); returns the number of trainable
    parameters. Parameter by parameter, as the model's family places it: freezing Qwen's tower
    (``model.visual``) by module would freeze its projector (``model.visual.merger``) too."""
    family = families.family_of(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(family.part_of(name) in parts)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def example(model: vlm.VLM, question: str, answer: str, image: str) -> dict[str, Any]:
    """One conversational prompt-completion row with its image (prepared as the family's training
    prepares it: the same image DPO and evaluation will show), as TRL's vision collator expects."""
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": answer}],
        "images": [model.image(image)],
    }


def fit_sft(
    config: SFTSettings, samples: Sequence[tuple[str, str, str]], out: Path, work: Path | None = None
) -> dict[str, float]:
    """Train on (question, answer, image path) samples; write the checkpoint to ``out``."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    device = precision.resolve(config.device, "sft")
    on_gpu = device.type == "cuda"
    scratch = Path(tempfile.mkdtemp(prefix="sft-", dir=work.parent if work is not None else None))
    try:
        start = base_model(config, scratch, [answer for _, answer, _ in samples] + [q for q, _, _ in samples])
        loaded = vlm.load(start, device=device, dtype=precision.dtype_for(device, config.precision), move=False)
        trainable = set_trainable(loaded.model, config.trainable)
        precision.fp32_masters(loaded.model)  # the unfrozen modules: bf16 weights would not take small updates
        # Training pads on the right (the answer follows the prompt); generation needs the left.
        loaded.processor.tokenizer.padding_side = "right"
        args = TRLSFTConfig(
            output_dir=str(scratch / "trainer"),
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            warmup_steps=config.warmup_ratio,
            lr_scheduler_type=config.scheduler,
            max_length=config.max_length,
            gradient_checkpointing=config.gradient_checkpointing,
            completion_only_loss=True,
            bf16=on_gpu,
            use_cpu=not on_gpu,
            save_strategy="no",
            logging_steps=10,
            seed=config.seed,
            remove_unused_columns=False,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        score_labelled_positions_only()
        trainer = SFTTrainer(
            model=loaded.model,
            args=args,
            train_dataset=Dataset.from_list([example(loaded, *sample) for sample in samples]),
            processing_class=loaded.processor,
        )
        result = quiet_progress(trainer, "sft").train()
        loaded.processor.tokenizer.padding_side = "left"
        trainer.model.save_pretrained(out)
        loaded.processor.save_pretrained(out)
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        metrics = {
            "train.steps": float(trainer.state.global_step),
            "train.loss": float(result.training_loss),
            "parameters.trainable": float(trainable),
        }
        if losses:  # a run shorter than one logging interval logged none
            metrics["train.loss.final"] = float(losses[-1])
        return metrics
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
