"""Tiny random-weight VLMs of every supported family, built from configs with the real classes.

Everything a production checkpoint has is here at toy size: the family's vision tower,
projector and decoder classes, a byte-level BPE tokenizer trained locally on medical text with
the family's special tokens, BOS behaviour and a chat template shaped like the real
checkpoint's, and the family's processor. ``build_tiny(family, out)`` writes one with
``save_pretrained``, so code under test loads it through exactly the path a real checkpoint
takes (``models.vlm.load``); a folder of a few hundred kB, a forward of a few ms on a CPU. The
same seed gives the same bytes. ``build_tiny_llava`` is the demo's model (with its own options).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from models import loading
from models.families import FAMILIES
from models.registry import bind
from models.tiny.gemma3 import build_gemma3
from models.tiny.idefics3 import build_idefics3
from models.tiny.llava import build_llava_next, build_tiny_llava
from models.tiny.qwen import build_qwen
from models.tiny.text import IMAGE, train_tokenizer

__all__ = ["IMAGE", "build_tiny", "build_tiny_llava", "train_tokenizer"]


def build_tiny(family: str, out: str | Path, seed: int = 0, extra_texts: Sequence[str] = ()) -> Path:
    """Write a tiny checkpoint of ``family`` (a ``models.families`` name) to ``out``; returns the folder.

    ``extra_texts`` joins the tokenizer's corpus (e.g. a data set's answers).
    """
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for {family!r}; families: {', '.join(BUILDERS)}")
    with loading.LOCK:  # the builders draw from the global RNG: seed and draws in one piece
        torch.manual_seed(seed)
        return BUILDERS[family](Path(out), list(extra_texts))


BUILDERS: dict[str, Callable[[Path, list[str]], Path]] = bind(
    "tiny builders of the VLM families",
    FAMILIES,
    {
        # build_tiny_llava seeds itself: with the seed build_tiny just set.
        "llava": lambda out, texts: build_tiny_llava(out, seed=torch.initial_seed(), extra_texts=texts),
        "llava_next": build_llava_next,
        "qwen2_vl": lambda out, texts: build_qwen(out, texts, "2"),
        "qwen2_5_vl": lambda out, texts: build_qwen(out, texts, "2.5"),
        "gemma3": build_gemma3,
        "idefics3": build_idefics3,
    },
)
