"""A tiny random-weight LLaVA built from configs with the real classes, for tests and the demo.

Everything a production checkpoint has is here at toy size: a CLIP vision tower, a
Mistral (LLaVA-Med v1.5's text model) or Llama decoder, a byte-level BPE tokenizer trained
locally on medical text with an ``<image>`` token and a chat template, and a LlavaProcessor
with a CLIP image processor. ``build_tiny_llava`` writes it with ``save_pretrained``, so code
under test loads it through exactly the path a real checkpoint takes (``models.vlm.load``).
The same seed gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    MistralConfig,
    PreTrainedTokenizerFast,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"

# LLaVA-Med v1.5 (Mistral) prompts as "[INST] <image>\nquestion [/INST] answer</s>"; the
# template renders OpenAI-style content lists ({"type": "image"} / {"type": "text"}) like the
# llava-hf checkpoints do, so the same message objects drive tiny and real models.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% for part in parts %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    " [/INST]"
    "{% elif message['role'] == 'assistant' %} "
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

MEDICAL_CORPUS: tuple[str, ...] = (
    "The heart is normal in size. The mediastinum is unremarkable.",
    "The lungs are clear without focal consolidation, pleural effusion or pneumothorax.",
    "There is a small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality.",
    "Mild cardiomegaly with pulmonary vascular congestion.",
    "A right lower lobe opacity is concerning for pneumonia.",
    "Degenerative changes of the thoracic spine.",
    "Is there a lesion in the liver? Yes, a hypodense lesion in the right hepatic lobe.",
    "Which organ is abnormal? The liver.",
    "What modality is used to take this image? MRI.",
    "What modality is used to take this image? CT.",
    "What imaging plane is this? Axial plane.",
    "Where is the brain edema located? In the left temporal lobe.",
    "Is the lung healthy? No.",
    "Does the picture contain kidney? Yes.",
    "What is the largest organ in the picture? The liver.",
    "Are there abnormalities in the chest X-ray? No acute findings.",
    "Is there evidence of a pneumothorax? No.",
    "Is there a fracture of the tibia? There is a non-ossifying fibroma of the distal tibia.",
    "The retina shows microaneurysms consistent with diabetic retinopathy.",
    "The colon shows mucosal thickening suggestive of colitis.",
    "There is a mass in the right upper lobe measuring 3 cm.",
    "The kidneys are normal in size without hydronephrosis.",
    "Describe the findings of this chest X-ray.",
    "The cardiac silhouette is enlarged. There is bilateral interstitial edema.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "The osseous structures are intact. No free air under the diaphragm.",
    "Findings are consistent with a nodule in the left lung apex.",
    "The spleen is enlarged. The gallbladder is unremarkable.",
    "An ischemic infarct is seen in the right middle cerebral artery territory.",
)


def train_tokenizer(texts: Sequence[str] = MEDICAL_CORPUS, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text encodes without unknown tokens, like a production LLM tokenizer."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, IMAGE],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE},
        chat_template=CHAT_TEMPLATE,
        # Batched generation appends to the right end of every row.
        padding_side="left",
        model_max_length=1024,
    )
    return tokenizer


def build_tiny_llava(
    out: str | Path,
    seed: int = 0,
    text_model: Literal["mistral", "llama"] = "mistral",
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    extra_texts: Sequence[str] = (),
    vision: Literal["clip", "siglip"] = "clip",
) -> Path:
    """Write a LLaVA checkpoint (model, tokenizer, processor) to ``out``; returns the folder.

    ``extra_texts`` joins the tokenizer's training corpus (e.g. the demo's answers), so it
    splits them into words the way a real medical model's tokenizer would. ``vision`` picks
    the tower: CLIP (LLaVA-1.5's) or SigLIP (LLaVA-OneVision's). A random-weight tower that
    must *learn* to see from scratch needs SigLIP: CLIP's pre-layernorm normalizes every
    patch embedding, which erases a patch's absolute brightness (a uniform bright patch and
    a uniform dark one become the same vector), so small intensity lesions are nearly
    invisible to an untrained CLIP tower.
    """
    out = Path(out)
    tokenizer = train_tokenizer([*MEDICAL_CORPUS, *extra_texts])
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    num_patches = (image_size // patch_size) ** 2

    tower = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    # CLIP has a CLS token that "default" drops (one image token per patch, as in LLaVA-1.5); SigLIP has none.
    strategy = "default" if vision == "clip" else "full"
    vision_config = CLIPVisionConfig(**tower, projection_dim=32) if vision == "clip" else SiglipVisionConfig(**tower)
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    text = MistralConfig(**text_kwargs) if text_model == "mistral" else LlamaConfig(**text_kwargs)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        image_seq_length=num_patches,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    if vision == "clip":
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    else:
        image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if vision == "clip" else 0,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
