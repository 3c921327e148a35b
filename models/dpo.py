"""Weighted DPO with image-side pairs, as small overrides of TRL's DPOTrainer.

MMedPO's objective (method.md, stage 6) is TRL's DPO loss with two changes:

* each pair's loss is multiplied by its clinical-relevance weight ``s'``:
  ``L = (1/N) * sum_i w_i * l_i`` over the N pairs of an optimizer step;
* a visual pair's rejected side is the same text on a *different* (lesion-noised) image.

TRL already multiplies every pair's loss by a detached per-pair factor before the batch
mean (its WPO weighting, ``exp(mean_t(log p_t - log_sum_sq_probs_t))`` over the completion
tokens). ``WeightedDPOTrainer`` keeps that multiplier switched on and, in a forward hook on
the policy, shifts ``log_sum_sq_probs`` by ``log w`` on the chosen rows, so the multiplier
becomes ``w_i`` (times WPO's own factor when WPO is asked for). Every TRL loss type that
scores pairs independently is then weighted in value and gradient, with TRL's loss code
untouched. ``ImagePairCollator`` runs TRL's vision collator with each side's own images, laid
out by the model family's own processor code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from PIL import Image
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from models import families
from models.families import Family
from models.progress import quiet_progress
from tasks.config import TrainConfig

log = logging.getLogger(__name__)

PAIR_TYPES = ("text", "visual")
# Keys the collator adds for the trainer; they never reach the model.
PAIR_KEYS = ("weight", "pair_type")
UNWEIGHTABLE_LOSSES = {"aot", "aot_unpaired", "sft"}


def open_image(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as handle:
        return handle.convert("RGB")


def preference_example(
    prompt: str, chosen: str, rejected: str, chosen_image: str, rejected_image: str, weight: float, pair_type: str
) -> dict[str, Any]:
    """One training row in the conversational form TRL's vision collator expects."""
    if pair_type not in PAIR_TYPES:
        raise ValueError(f"pair_type must be one of {PAIR_TYPES}, got {pair_type!r}")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "image": str(chosen_image),
        "rejected_image": str(rejected_image),
        "weight": float(weight),
        "pair_type": pair_type,
    }


@dataclass
class ImagePairCollator(DataCollatorForVisionPreference):
    """TRL's vision preference collator, with each side of a pair seeing its own image.

    The batch is ``[chosen_0..chosen_B-1, rejected_0..rejected_B-1]``. TRL would give both
    halves the chosen image; here the one processor call that builds the image tensors gets
    ``[[c_0]..[c_B-1], [r_0]..[r_B-1]]`` (``families.TemplateProcessor``), so the family's own
    code lays out every image: Qwen's patches of all 2B images concatenated with one
    ``image_grid_thw`` row each, Idefics3's and LLaVA-NeXT's tiles, and a rejected image of
    another size than its chosen one with its own number of image tokens. The same wrapper
    renders templates with BOS exactly once, which TRL's ``add_special_tokens=False`` drops for
    templates that leave BOS to the tokenizer.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]  # TRL's collator edits its input
        chosen_images, rejected_images = [], []
        for example in examples:
            chosen_path = example.pop("image")
            rejected_path = example.pop("rejected_image", chosen_path)
            chosen = open_image(chosen_path)
            chosen_images.append([chosen])
            rejected_images.append([chosen if rejected_path == chosen_path else open_image(rejected_path)])
            example["images"] = [chosen]
        weights = torch.tensor([float(e.pop("weight", 1.0)) for e in examples], dtype=torch.float32)
        pair_types = torch.tensor([PAIR_TYPES.index(e.pop("pair_type", "text")) for e in examples], dtype=torch.long)
        processor = families.TemplateProcessor(self.processor, chosen_images + rejected_images)
        output = DataCollatorForVisionPreference.torch_call(replace(self, processor=processor), examples)
        # TRL truncates after the prompt: a prompt as long as max_length leaves no answer token (and a
        # longer one cuts image tokens, which the model then refuses).
        empty = (output["completion_mask"].sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"rows {empty} of the batch keep no answer token under max_length={self.max_length}: "
                "raise train.max_length (check_lengths finds such pairs before training)"
            )
        output["weight"] = weights
        output["pair_type"] = pair_types
        return output


def check_lengths(processor: Any, examples: list[dict[str, Any]], max_length: int | None, chunk: int = 16) -> None:
    """Fail before training when a pair's prompt - with its images expanded into image tokens, on
    either side - leaves no answer token under ``max_length``; log how many answers it truncates.

    One pass of the pair collator over the set: the lengths are exactly those training sees.
    """
    if max_length is None:
        return
    collator = ImagePairCollator(processor)
    longest_prompt, too_long, truncated = 0, 0, 0
    for start in range(0, len(examples), chunk):
        batch = collator(examples[start : start + chunk])
        total = batch["attention_mask"].sum(dim=1)
        prompt = total - batch["completion_mask"].sum(dim=1)
        pairs = len(batch["weight"])
        longest_prompt = max(longest_prompt, int(prompt.max()))
        too_long += int((prompt >= max_length).view(2, pairs).any(dim=0).sum())
        truncated += int((total > max_length).view(2, pairs).any(dim=0).sum())
    if too_long:
        raise ValueError(
            f"{too_long} of {len(examples)} pairs have a prompt of max_length={max_length} tokens or more "
            f"(images expanded; the longest is {longest_prompt}): no answer token would be trained on; "
            f"raise train.max_length above {longest_prompt}"
        )
    if truncated:
        log.warning(
            "train: max_length=%d truncates the answers of %d of %d pairs", max_length, truncated, len(examples)
        )


class WeightedDPOTrainer(DPOTrainer):
    """DPOTrainer whose pair losses carry per-pair weights, with image pairs and an mDPO anchor.

    Extra arguments: ``anchor_coef`` adds mDPO's anchor ``-log sigmoid(beta * chosen
    log-ratio - anchor_margin)`` (weighted like the pair loss), which keeps the chosen
    answer's likelihood from falling while the rejected one is pushed down.
    """

    def __init__(
        self,
        *args: Any,
        anchor_coef: float = 0.0,
        anchor_margin: float = 0.0,
        projector_lr: float | None = None,
        projector_module: str = "multi_modal_projector",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.projector_lr = projector_lr
        self.projector_module = projector_module
        unweightable = UNWEIGHTABLE_LOSSES.intersection(self.loss_types)
        if unweightable:
            raise ValueError(
                f"loss types {sorted(unweightable)} score the batch as a whole (sorting or a token mean across "
                "pairs), so per-pair weights do not apply; use a pairwise loss type"
            )
        self.anchor_coef = anchor_coef
        self.anchor_margin = anchor_margin
        # WPO's own factor stays available: when asked for, its log_sum_sq_probs are computed and shifted.
        self.wpo = self.use_weighting
        self.use_weighting = True
        self._batch: dict[str, torch.Tensor] | None = None
        self._captured: list[Any] = []
        self._pairs_in_step: int | None = None
        policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        policy.register_forward_hook(self._weigh_outputs)
        if self.ref_model is not None:
            self.ref_model.register_forward_hook(self._capture_outputs)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The paper trains the multimodal projector at its own learning rate (2e-5) beside
        LoRA adapters at 1e-7: trainable projector parameters move to groups of their own.
        Done before the scheduler exists, so the schedule scales each group from its own lr."""
        optimizer = super().create_optimizer(model)
        if self.projector_lr is None:
            return optimizer
        names = {id(p): n for n, p in (model or self.model).named_parameters()}
        for group in list(optimizer.param_groups):
            projector = [p for p in group["params"] if self.projector_module in names.get(id(p), "")]
            if projector:
                group["params"] = [p for p in group["params"] if self.projector_module not in names.get(id(p), "")]
                optimizer.add_param_group(
                    {**{k: v for k, v in group.items() if k != "params"}, "params": projector, "lr": self.projector_lr}
                )
        return optimizer

    def _capture_outputs(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._batch is not None:
            self._captured.append(output)

    def _weigh_outputs(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Turn TRL's per-pair WPO factor into the pair weight (the first call per batch is the policy)."""
        if self._batch is None or getattr(output, "log_probs", None) is None:
            return
        self._captured.append(output)
        log_probs = output.log_probs.detach()
        base = output.log_sum_sq_probs if self.wpo else log_probs
        weights = self._batch["weight"].to(log_probs)
        # log 0 = -inf gives a factor exp(-inf) = 0: a zero-weight pair contributes neither loss nor gradient.
        shift = torch.cat([torch.log(weights), torch.zeros_like(weights)])
        output.log_sum_sq_probs = torch.where(output.label_mask, base - shift[:, None], base)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._pairs_in_step = sum(len(batch["weight"]) for batch in batches) or None
        return batches, num_items

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        inputs = dict(inputs)
        self._batch = {key: inputs.pop(key) for key in PAIR_KEYS}
        self._captured = []
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = result if return_outputs else (result, None)
            loss = loss + self._anchor_and_metrics(inputs)
        finally:
            self._batch = None
            self._captured = []
        pairs = len(inputs["completion_mask"]) // 2
        if self.model.training and self._pairs_in_step:
            # Trainer divides each micro-batch loss by the number of micro-batches; rescaling the batch mean
            # to sum/pairs_in_step makes the step's loss the weighted mean over all its pairs, even when the
            # last micro-batch is short.
            loss = loss * (pairs * self.current_gradient_accumulation_steps / self._pairs_in_step)
        return (loss, outputs) if return_outputs else loss

    def _anchor_and_metrics(self, inputs: dict[str, Any]) -> torch.Tensor | float:
        """mDPO anchor term and rewards/margins per pair type, from the captured forwards."""
        if not self._captured:
            return 0.0
        mask = inputs["completion_mask"][..., 1:]
        seq_len = mask.size(1)
        policy_logps = (self._captured[0].log_probs[:, -seq_len:] * mask).sum(dim=1)
        chosen_logps, rejected_logps = policy_logps.chunk(2)
        if len(self._captured) > 1:
            ref_logps = (self._captured[1].log_probs[:, -seq_len:].detach() * mask).sum(dim=1)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
        else:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        chosen_rewards = self.beta * (chosen_logps - ref_chosen)
        rejected_rewards = self.beta * (rejected_logps - ref_rejected)
        weights = self._batch["weight"].to(chosen_rewards)

        mode = "train" if self.model.training else "eval"
        margins = (chosen_rewards - rejected_rewards).detach()
        pair_types = self._batch["pair_type"].to(margins.device)
        gathered = self.accelerator.gather_for_metrics(
            (pair_types, chosen_rewards.detach(), rejected_rewards.detach(), margins, weights)
        )
        kinds, chosen_all, rejected_all, margins_all, weights_all = gathered
        self._metrics[mode]["weight"].append(weights_all.mean().item())
        for code, name in enumerate(PAIR_TYPES):
            selected = kinds == code
            if not bool(selected.any()):
                continue
            self._metrics[mode][f"{name}/rewards/chosen"].append(chosen_all[selected].mean().item())
            self._metrics[mode][f"{name}/rewards/rejected"].append(rejected_all[selected].mean().item())
            self._metrics[mode][f"{name}/rewards/margins"].append(margins_all[selected].mean().item())
            self._metrics[mode][f"{name}/rewards/accuracies"].append((margins_all[selected] > 0).float().mean().item())

        if self.anchor_coef == 0.0:
            return 0.0
        anchor = -F.logsigmoid(chosen_rewards - self.anchor_margin)
        anchor = (weights * anchor).mean()
        self._metrics[mode]["anchor_loss"].append(self.accelerator.gather_for_metrics(anchor.detach()).mean().item())
        return self.anchor_coef * anchor


# --- construction from the train stage's settings ------------------------------------------------


def dpo_arguments(settings: TrainConfig, checkpoints: str) -> DPOConfig:
    """TRL's DPOConfig from the train stage's settings (the paper's defaults live there).

    Built before the model is loaded: under DeepSpeed ZeRO-3 the arguments make
    ``from_pretrained`` shard while loading.
    """
    on_gpu = torch.cuda.is_available()
    return DPOConfig(
        output_dir=checkpoints,
        beta=settings.beta,
        loss_type=settings.loss_type,
        loss_weights=settings.loss_weights,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type=settings.scheduler,
        max_length=settings.max_length,
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        remove_unused_columns=False,  # the collator needs the image paths, weights and pair kinds
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def lora_config(settings: TrainConfig, family: Family) -> LoraConfig:
    """Adapters on the family's language model (unless ``lora_target`` names other modules), and a
    fully trained copy of its projector, saved with the adapter, when ``projector_lr`` is set."""
    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target or family.lora_target,
        modules_to_save=[family.projector_leaf] if settings.projector_lr is not None else None,
    )


def make_trainer(
    settings: TrainConfig,
    args: DPOConfig,
    policy: Any,
    reference: Any | None,
    processor: Any,
    pairs: list[dict[str, Any]],
) -> WeightedDPOTrainer:
    """The weighted trainer over ``pairs`` (rows of the preference set), LoRA on ``policy``.

    Fails before training when ``settings.max_length`` leaves a pair no answer token.
    """
    from datasets import Dataset

    family = families.family_of(policy)
    examples = [
        preference_example(
            p["prompt"],
            p["chosen"],
            p["rejected"],
            p["chosen_image"],
            p["rejected_image"],
            p["weight"],
            p["pair_type"],
        )
        for p in pairs
    ]
    check_lengths(processor, examples, settings.max_length)
    trainer = WeightedDPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=processor,
        data_collator=ImagePairCollator(processor, max_length=settings.max_length),
        peft_config=lora_config(settings, family),
        anchor_coef=settings.anchor_coef,
        anchor_margin=settings.anchor_margin,
        projector_lr=settings.projector_lr,
        projector_module=family.projector_leaf,
    )
    return quiet_progress(trainer, "dpo")
