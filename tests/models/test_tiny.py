from pathlib import Path

import numpy as np
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from models import vlm
from models.tiny import IMAGE, build_tiny_llava, train_tokenizer


def test_tiny_checkpoint_loads_like_a_production_one(tiny_llava: Path):
    loaded = vlm.load(tiny_llava, device="cpu")
    assert isinstance(loaded.model, LlavaForConditionalGeneration)
    assert isinstance(loaded.processor, LlavaProcessor)
    assert loaded.model.dtype.is_floating_point and str(loaded.model.dtype) == "torch.float32"
    image_id = loaded.tokenizer.convert_tokens_to_ids(IMAGE)
    assert loaded.model.config.image_token_index == image_id

    text = vlm.prompt(loaded.processor, "Is the lung healthy?")
    assert text == "<s>[INST] <image>\nIs the lung healthy? [/INST]"
    image = Image.fromarray(np.full((50, 40, 3), 128, np.uint8))
    batch = loaded.processor(text=[text], images=[image], return_tensors="pt")
    # 32 px / 8 px patches = 16 image tokens, one per patch (CLS dropped).
    assert int((batch["input_ids"] == image_id).sum()) == 16
    assert tuple(batch["pixel_values"].shape) == (1, 3, 32, 32)
    logits = loaded.model(**batch).logits
    assert logits.shape[-1] == len(loaded.tokenizer)


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tiny_llava: Path):
    again = build_tiny_llava(tmp_path / "again", seed=0)
    other = build_tiny_llava(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_llava / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (tiny_llava / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_llava / "tokenizer.json").read_bytes()


def test_tokenizer_round_trips_unseen_text_and_learns_medical_words():
    tokenizer = train_tokenizer()
    text = "Pneumoperitoneum: 12 mm, naïve <image> ok"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_tokens_to_ids(IMAGE) in ids
    # Frequent corpus words become single tokens, as in a real medical tokenizer.
    assert len(tokenizer.encode(" effusion", add_special_tokens=False)) < len(" effusion")
