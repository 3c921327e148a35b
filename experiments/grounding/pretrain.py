"""Stage ``pretrain``: the from-scratch vision tower learns the lesion's shape before the SFT, without the LM.

A real LLaVA starts from a pretrained CLIP tower; the experiment's tower is built at random, and the
LM-frozen SFT alone taught it too little to answer from the image on every draw (README, "SFT
recipe"). So the tower first trains on its own, on fresh views from the data set's generator (the
lesion's side at random, 50%: no prior; none of these views is an SFT, preference or evaluation
image), with two small heads that are then thrown away: one scores each image token, a softmax over
the tokens pointing at the cell holding the lesion's centre; one reads the tokens' mean and names the
lesion's quadrant. A step without the language model costs milliseconds, so tens of thousands of views
are cheap. Output: ``model/``, the composed LLaVA with the pretrained tower, which the SFT starts from.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from experiments.grounding.config import BackboneConfig, GroundingDataConfig, PretrainConfig
from experiments.grounding.data import load_backgrounds, make_scene
from tasks.config import SFTConfig
from tasks.config.base import StageConfig
from tasks.store import ArtifactStore, Manifest, code_version

STAGE = "pretrain"
CODE = code_version(__name__)
MODEL = "model"
HELD_OUT = 1000  # views kept out of training, for the heads' accuracy in the artifact's counters


class TowerPretraining(StageConfig):
    """What a pretrained start is made of: the composed model, the views' generator, the training."""

    sft: SFTConfig = Field(description="The SFT the start is for: its text model, layers and tower geometry")
    data: GroundingDataConfig = Field(description="The generator the views are drawn from (its own seed below)")
    pretrain: PretrainConfig
    seed: int = Field(description="The composed model's init, the views' draw and the batches' order")


def pretrain(store: ArtifactStore, config: TowerPretraining) -> Manifest:
    """The composed LLaVA with its tower pretrained; ``model_dir`` of it is the SFT's ``model``."""
    return store.run(STAGE, CODE, config, {}, lambda out: build_pretrained(out, config), ("metrics.json",))


def model_dir(manifest: Manifest) -> Path:
    return Path(manifest.path) / MODEL


def build_pretrained(out: Path, config: TowerPretraining) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pretrain-") as scratch:
        return train_tower(out, config, Path(scratch))


def train_tower(out: Path, config: TowerPretraining, scratch: Path) -> dict[str, float]:
    import torch

    from models import vlm
    from models.sft import base_model

    sft, settings = config.sft, config.pretrain
    if sft.text_model is None:
        raise ValueError("pretrain: the SFT has no text_model to compose the tower with")
    # The SFT's own composition (its tiny_seed is the run's seed: seed_sft), so the tower trained here is
    # the one that SFT would have started from.
    composed = base_model(sft, scratch, texts=[])
    # On the CPU in fp32 wherever it runs: the heads and views below are made there, and a tower trained
    # in a GPU's bf16 would have no fp32 master weights.
    loaded = vlm.load(composed, device="cpu", dtype=torch.float32)
    side = sft.tiny_image_size // sft.tiny_patch_size
    pixels, cells = views(loaded, config, side, load_backgrounds(scratch / "backgrounds"))
    torch.manual_seed(config.seed)
    tower = loaded.model.model.vision_tower
    width = tower.config.hidden_size
    point, quadrant = torch.nn.Linear(width, 1), torch.nn.Linear(width, 4)
    parameters = [*tower.parameters(), *point.parameters(), *quadrant.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    order = torch.Generator().manual_seed(config.seed)

    def heads(batch: Any) -> tuple[Any, Any]:
        tokens = tower(pixel_values=batch).last_hidden_state
        return point(tokens).squeeze(-1), quadrant(tokens.mean(1))

    tower.train()
    losses = []
    for _ in range(settings.steps):
        index = HELD_OUT + torch.randint(0, len(pixels) - HELD_OUT, (settings.batch_size,), generator=order)
        pointed, named = heads(pixels[index])
        loss = torch.nn.functional.cross_entropy(pointed, cells[index]) + torch.nn.functional.cross_entropy(
            named, quadrant_of(cells[index], side)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    tower.eval()
    with torch.no_grad():
        pointed, named = heads(pixels[:HELD_OUT])
    held = cells[:HELD_OUT]
    metrics = {
        "views": float(len(pixels)),
        "steps": float(settings.steps),
        "loss.final": float(np.mean(losses[-50:])),
        "held_out.cell_accuracy": float((pointed.argmax(-1) == held).float().mean()),
        "held_out.quadrant_accuracy": float((named.argmax(-1) == quadrant_of(held, side)).float().mean()),
    }
    loaded.model.save_pretrained(out / MODEL)
    loaded.processor.save_pretrained(out / MODEL)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics


def views(
    loaded: Any, config: TowerPretraining, side: int, backgrounds: list[tuple[str, np.ndarray]]
) -> tuple[Any, Any]:
    """Fresh views (the tower's pixel values, as the model's processor prepares them) and the index of the
    token cell holding each lesion's centre; the lesion's side and half are drawn at 50%."""
    import torch
    from PIL import Image

    data = config.data
    rng = np.random.default_rng([config.seed, data.seed])
    size = data.image_size
    images, cells = [], []
    for _ in range(config.pretrain.views):
        scene = make_scene(rng, backgrounds, data, bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        images.append(loaded.image(Image.fromarray(scene.render())))
        x, y = scene.lesion
        cells.append(int(y * side // size) * side + int(x * side // size))
    pixels = loaded.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor(cells)


def quadrant_of(cells: Any, side: int) -> Any:
    """0 upper left, 1 upper right, 2 lower left, 3 lower right, from a token cell's index."""
    return (cells // side >= side // 2) * 2 + (cells % side >= side // 2)


def seed_sft(
    store_root: str, backbone: BackboneConfig, data: GroundingDataConfig, seed: int
) -> tuple[SFTConfig, Manifest | None]:
    """The backbone's SFT for ``seed`` and, when the backbone pretrains its tower, the pretrained start
    that SFT begins from (built, or found in the store, here)."""
    sft = backbone.sft.model_copy(update={"seed": seed, "tiny_seed": seed})
    if backbone.pretrain is None:
        return sft, None
    start = pretrain(
        ArtifactStore(store_root), TowerPretraining(sft=sft, data=data, pretrain=backbone.pretrain, seed=seed)
    )
    # The pretrained start replaces the composition (SFTConfig takes one of the two).
    return sft.model_copy(update={"model": model_dir(start), "text_model": None, "text_layers": None}), start
