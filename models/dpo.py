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
untouched. ``models.pairs.ImagePairCollator`` gives each side of a pair its own image. Every
TRL internal this relies on is checked where it is used (models.trl_checks), so a TRL upgrade
that changes one fails at the first step.

A pair of weight 0 gets a finite log-weight floor (``LOG_ZERO_WEIGHT``), not log 0 = -inf: its
factor is exactly 0 (no loss, no gradient) and nothing can turn it into NaN. Dropout runs in the
LoRA adapters only (TRL's ``disable_dropout`` would zero the configured LoRA dropout too), so
the adapters-off reference stays deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from models import ddp, families, precision
from models.adapters import adapter_to_train, base_model_reference
from models.families import Family
from models.pairs import PAIR_KEYS, PAIR_TYPES, ImagePairCollator, check_lengths, preference_example
from models.progress import quiet_progress
from models.settings import TrainSettings
from models.trl_checks import check_forwards, check_fused_output, check_weighting, score_labelled_positions_only

UNWEIGHTABLE_LOSSES = {"aot", "aot_unpaired", "sft"}
# log of a zero weight: exp(-1e4) is exactly 0 in float32 and bfloat16, yet finite, so a mask
# mismatch multiplies it by 0 and gets 0 where log 0 = -inf would give NaN.
LOG_ZERO_WEIGHT = -1e4


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
        self._grad_enabled: list[bool] = []
        self._pairs_in_step: int | None = None
        policy = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        policy.register_forward_hook(self._weigh_outputs)
        if self.ref_model is not None:
            self.ref_model.register_forward_hook(self._capture_outputs)
        dropout_in_adapters_only(self.model, self.ref_model)

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
            self._grad_enabled.append(torch.is_grad_enabled())

    def _weigh_outputs(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        """Turn TRL's per-pair WPO factor into the pair weight (the first call per batch is the policy)."""
        if self._batch is None or getattr(output, "log_probs", None) is None:
            return
        check_fused_output(output, self._batch["completion_mask"], self.wpo)
        self._captured.append(output)
        self._grad_enabled.append(torch.is_grad_enabled())
        log_probs = output.log_probs.detach()
        base = output.log_sum_sq_probs if self.wpo else log_probs
        weights = self._batch["weight"].to(log_probs)
        log_weights = torch.where(weights > 0, torch.log(weights.clamp_min(1e-30)), LOG_ZERO_WEIGHT)
        shift = torch.cat([log_weights, torch.zeros_like(weights)])
        output.log_sum_sq_probs = torch.where(output.label_mask, base - shift[:, None], base)

    def get_train_dataloader(self) -> Any:
        if self.accelerator.num_processes == 1:
            return super().get_train_dataloader()
        # Data parallel: the same number of micro-batches on every rank, no pair repeated (models/ddp.py),
        # so ranks may hold different numbers of pairs and every per-pair gather must allow for it.
        ddp.gather_ragged(self.accelerator)
        return ddp.train_dataloader(self)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: torch.device) -> tuple[list, Any]:
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        # The step's pairs over all ranks / ranks: DDP's average of the ranks' gradients is then the
        # weighted mean over every pair of the step (models/ddp.py).
        self._pairs_in_step = ddp.pairs_per_rank(self.accelerator, batches, device)
        return batches, num_items

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ):
        inputs = dict(inputs)
        inputs.pop(ddp.COUNTED, None)  # fillers carry weight 0: no loss, no gradient
        self._batch = {key: inputs.pop(key) for key in PAIR_KEYS} | {"completion_mask": inputs["completion_mask"]}
        self._captured, self._grad_enabled = [], []
        try:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = result if return_outputs else (result, None)
            check_forwards(self._grad_enabled, self.precompute_ref_logps, self.model.training)
            loss = loss + self._anchor_and_metrics(inputs, loss)
        finally:
            self._batch = None
            self._captured, self._grad_enabled = [], []
        pairs = len(inputs["completion_mask"]) // 2
        if self.model.training and self._pairs_in_step:
            # Trainer divides each micro-batch loss by the number of micro-batches; rescaling the batch mean
            # to sum/pairs_in_step makes the step's loss the weighted mean over all its pairs, even when the
            # last micro-batch is short (and, under DDP, whatever each rank holds).
            loss = loss * (pairs * self.current_gradient_accumulation_steps / self._pairs_in_step)
        return (loss, outputs) if return_outputs else loss

    def _anchor_and_metrics(self, inputs: dict[str, Any], trl_loss: torch.Tensor) -> torch.Tensor | float:
        """mDPO anchor term and rewards/margins per pair type, from the captured forwards."""
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
        if self._plain_sigmoid_loss():
            check_weighting(trl_loss, chosen_rewards, rejected_rewards, weights)

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

    def _plain_sigmoid_loss(self) -> bool:
        """TRL's loss is the paper's sigmoid loss alone, so it can be recomputed from the rewards."""
        return (
            list(self.loss_types) == ["sigmoid"]
            and list(self.loss_weights) == [1.0]
            and self.f_divergence_type == "reverse_kl"
            and self.ld_alpha is None
            and not self.aux_loss_enabled
            and not self.wpo
        )


def dropout_in_adapters_only(policy: torch.nn.Module, reference: torch.nn.Module | None) -> None:
    """The configured LoRA dropout in the adapters, none anywhere else.

    TRL's ``disable_dropout`` sets p = 0 on every ``nn.Dropout`` of the PEFT-wrapped policy,
    LoRA's own included, so the configured lora_dropout (the paper's 0.05) never trained. Here
    each adapter's dropout gets its configured p back, and every other dropout - the base
    model's, which the adapters-off reference also runs, and a separate reference's - is 0, so
    the reference log-probs are deterministic (an adapter's dropout sits on its own branch,
    which the reference forward skips).
    """
    configs = getattr(policy, "peft_config", {})
    for name, module in policy.named_modules():
        if isinstance(module, torch.nn.Dropout):
            parts = name.split(".")
            in_adapter = len(parts) >= 2 and parts[-2] == "lora_dropout" and parts[-1] in configs
            module.p = configs[parts[-1]].lora_dropout if in_adapter else 0.0
    for module in reference.modules() if reference is not None else ():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# --- construction from the train stage's settings ------------------------------------------------


def dpo_arguments(
    settings: TrainSettings, checkpoints: str, processes: int = 1, device: torch.device | None = None
) -> DPOConfig:
    """TRL's DPOConfig from the train stage's settings (the paper's defaults live there), for a
    run of ``processes`` data-parallel processes (they set the gradient accumulation that keeps
    the global batch at ``settings.global_batch_size``).

    Built before the model is loaded: under DeepSpeed ZeRO-3 the arguments make
    ``from_pretrained`` shard while loading.
    """
    device = device or precision.resolve(settings.device, "train")
    on_gpu = device.type == "cuda"
    return DPOConfig(
        output_dir=checkpoints,
        beta=settings.beta,
        loss_type=settings.loss_type,
        loss_weights=settings.loss_weights,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.accumulation_steps(processes),
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
        # TRL would zero the LoRA dropout too; WeightedDPOTrainer keeps it and zeroes the rest itself.
        disable_dropout=False,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=loader_workers(settings, on_gpu),
        dataloader_persistent_workers=loader_workers(settings, on_gpu) > 0,
    )


def loader_workers(settings: TrainSettings, on_gpu: bool) -> int:
    """Processes that decode the pairs' images: on a GPU full-resolution PNGs decode beside the
    training step, not inside it; on the CPU the step already has every core."""
    if settings.dataloader_workers == "auto":
        return 4 if on_gpu else 0
    return settings.dataloader_workers


def lora_config(settings: TrainSettings, family: Family) -> LoraConfig:
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
    settings: TrainSettings,
    args: DPOConfig,
    policy: Any,
    reference: Any | None,
    processor: Any,
    pairs: list[dict[str, Any]],
    heldout: Sequence[dict[str, Any]] = (),
) -> WeightedDPOTrainer:
    """The weighted trainer over ``pairs`` (rows of the preference set), LoRA on ``policy``: a new
    adapter, or ``settings.init_adapter`` trained further (the reference is the base model either way).
    ``heldout`` pairs are its evaluation set (``heldout_metrics``).

    Fails before training when ``settings.max_length`` leaves a pair no answer token.
    """
    from datasets import Dataset

    family = families.family_of(policy)
    examples, held = _examples(pairs), _examples(heldout)
    check_lengths(processor, examples + held, settings.max_length, family=family)
    score_labelled_positions_only()
    policy, peft_config = adapter_to_train(policy, settings.init_adapter, lora_config(settings, family))
    trainer = WeightedDPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(examples),
        eval_dataset=Dataset.from_list(held) if held else None,
        processing_class=processor,
        data_collator=ImagePairCollator(processor, max_length=settings.max_length, family=family),
        peft_config=peft_config,
        anchor_coef=settings.anchor_coef,
        anchor_margin=settings.anchor_margin,
        projector_lr=settings.projector_lr,
        projector_module=family.projector_leaf,
    )
    if settings.init_adapter is not None:
        base_model_reference(trainer.model)
    if not trainer.is_deepspeed_enabled:  # DeepSpeed keeps fp32 masters of its own
        precision.fp32_masters(trainer.model)
    return quiet_progress(trainer, "dpo")


def _examples(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("prompt", "chosen", "rejected", "chosen_image", "rejected_image", "weight", "pair_type")
    return [preference_example(*(p[key] for key in keys)) for p in pairs]


# What a newcomer reads off held-out pairs: how often the trained model prefers the chosen answer
# (reward accuracy), by how much (reward margin), and whether the chosen answer itself got likelier.
HELDOUT_METRICS = ("rewards/accuracies", "rewards/margins", "logps/chosen")


def heldout_metrics(trainer: WeightedDPOTrainer) -> dict[str, float]:
    """TRL's DPO metrics of the model as it is now on the trainer's held-out pairs (its eval set)."""
    result = trainer.evaluate()  # TRL names its own metrics eval_* whatever the prefix
    return {metric: float(result[f"eval_{metric}"]) for metric in HELDOUT_METRICS}
