"""The tiny models' text side: a byte-level BPE tokenizer trained locally on medical text, with a
family's special tokens and BOS behaviour, and chat templates shaped like the real checkpoints'."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"

# Chat templates shaped like the real checkpoints', over OpenAI-style content lists
# ({"type": "image"} / {"type": "text"}) as the hub's processors render them; a string content
# renders too. Each differs where real ones do: BOS in the template or not, roles, image markers.
_PARTS = (
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
)

# LLaVA-Med v1.5 (Mistral): "<s>[INST] <image>\nquestion [/INST] answer</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}" + _PARTS + "{% if message['role'] == 'user' %}[INST] "
    "{% for part in parts %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    " [/INST]"
    "{% elif message['role'] == 'assistant' %} "
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)
# llava-v1.6-mistral-7b-hf: the same turns without BOS; its tokenizer adds <s> itself.
NO_BOS_TEMPLATE = CHAT_TEMPLATE.removeprefix("{{ bos_token }}")
# Qwen2-VL / Qwen2.5-VL Instruct (Lingshu, HuatuoGPT-Vision): ChatML, a default system turn, no BOS.
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _PARTS + "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Gemma 3 IT (MedGemma): BOS in the template (the tokenizer adds one too), a "model" role.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n" + _PARTS + "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
# Idefics3 / SmolVLM: a literal <|begin_of_text|> (the tokenizer adds one too), "User:<image>question".
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>"
    "{% for message in messages %}" + _PARTS + "{{ message['role'] | capitalize }}"
    "{% if parts[0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in parts %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
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


# Role words of the templates, so the tokenizer knows them as words.
TEMPLATE_WORDS = ("You are a helpful assistant.", "user assistant model system User Assistant")


@dataclass(frozen=True)
class Specials:
    """A tokenizer's special tokens (ids 0..n-1 in this order) and whether encoding adds BOS, as
    Llama and Gemma tokenizers do."""

    tokens: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE)
    bos: str | None = BOS
    eos: str = EOS
    pad: str = PAD
    unk: str | None = UNK
    named: dict[str, str] = field(default_factory=lambda: {"image_token": IMAGE})
    add_bos: bool = False


def train_tokenizer(
    texts: Sequence[str] = MEDICAL_CORPUS,
    vocab_size: int = 512,
    specials: Specials = Specials(),
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text encodes without unknown tokens, like a production LLM tokenizer."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials.tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if specials.add_bos:
        bos = (specials.bos, backend.token_to_id(specials.bos))
        prepend = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
        )
        backend.post_processor = processors.Sequence([backend.post_processor, prepend])
    optional = {"bos_token": specials.bos, "unk_token": specials.unk}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=specials.eos,
        pad_token=specials.pad,
        **{k: v for k, v in optional.items() if v is not None},
        extra_special_tokens=specials.named,
        chat_template=chat_template,
        # Batched generation appends to the right end of every row.
        padding_side="left",
        model_max_length=1024,
    )


def family_tokenizer(extra_texts: Sequence[str], specials: Specials, template: str) -> PreTrainedTokenizerFast:
    return train_tokenizer([*MEDICAL_CORPUS, *TEMPLATE_WORDS, *extra_texts], specials=specials, chat_template=template)
