"""Where a model runs and in which dtype; fp32 master weights for the parts that train fully.

Every stage that loads a model has a ``device`` setting, ``auto | cpu | cuda``. ``auto`` is
the GPU when torch can use one and says which it chose (a driver mismatch or a scheduler that
hides the GPUs otherwise turns a day on a card into weeks on the CPU without a word); ``cuda``
fails where no GPU is usable (config validation calls ``check``).

A model loaded in bf16 whose projector (or SFT's unfrozen modules) trains fully would update
bf16 weights in place: an AdamW step of lr 2e-5 is below half a bf16 ulp for any weight with
|w| > ~0.008, so most of them never move. ``fp32_masters`` keeps those weights in fp32; their
modules compute in the dtype of their input (the bf16 activations around them).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch

log = logging.getLogger(__name__)

Setting = Literal["auto", "cpu", "cuda"]
LOW_PRECISION = (torch.bfloat16, torch.float16)


def gpu_usable() -> bool:
    return torch.cuda.is_available()


def check(setting: str) -> str:
    """``setting`` when this machine can honour it; ``cuda`` without a usable GPU raises ValueError."""
    if setting == "cuda" and not gpu_usable():
        raise ValueError(
            f"cuda, but torch sees no usable GPU here ({torch.cuda.device_count()} visible; a driver/CUDA "
            "mismatch or CUDA_VISIBLE_DEVICES hiding them): fix the machine, or set auto or cpu"
        )
    return setting


def resolve(setting: str, what: str) -> torch.device:
    """The device ``setting`` names for ``what`` (a stage or model, for the log line)."""
    check(setting)
    chosen = torch.device("cuda" if setting == "cuda" or (setting == "auto" and gpu_usable()) else "cpu")
    if setting == "auto":
        log.info("%s: device auto -> %s", what, chosen)
    return chosen


def dtype_for(device: torch.device, precision: str = "auto") -> torch.dtype:
    """bf16 on a GPU (what LLaVA-Med was trained in), fp32 on the CPU unless asked for (by the
    training settings' names, bf16 / fp32, or the judges', bfloat16 / float32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[
        precision
    ]


def fp32_masters(model: torch.nn.Module) -> list[str]:
    """Trainable low-precision weights made fp32, in place; returns the modules changed.

    Each changed module casts its floating inputs to fp32 and its output back to the input's
    dtype, so the model around it is unchanged (under autocast the matmuls run in bf16 still:
    only the weights and their optimizer updates are fp32). LoRA weights are fp32 already (peft).
    """
    changed = []
    for name, module in model.named_modules():
        owned = [p for p in module.parameters(recurse=False) if p.requires_grad and p.dtype in LOW_PRECISION]
        if not owned:
            continue
        for parameter in owned:
            parameter.data = parameter.data.float()
        module.register_forward_pre_hook(_inputs_to_fp32, with_kwargs=True)
        module.register_forward_hook(_output_back, with_kwargs=True)
        changed.append(name)
    return changed


def _inputs_to_fp32(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    dtypes = [a.dtype for a in (*args, *kwargs.values()) if torch.is_tensor(a) and a.is_floating_point()]
    module._input_dtype = dtypes[0] if dtypes else None  # noqa: SLF001 - read back by _output_back
    return tuple(_fp32(a) for a in args), {k: _fp32(v) for k, v in kwargs.items()}


def _output_back(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    dtype = getattr(module, "_input_dtype", None)
    if dtype is None or not torch.is_tensor(output) or not output.is_floating_point():
        return output
    return output.to(dtype)


def _fp32(value: Any) -> Any:
    return value.float() if torch.is_tensor(value) and value.is_floating_point() else value
