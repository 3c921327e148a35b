"""segment-anything: building/loading a ``Sam`` and prompting it with boxes or points.

``SamPredictor`` encodes one image per ``set_image``; ``SamSegmenter`` runs the same steps
(``ResizeLongestSide``, ``Sam.preprocess``, encoder, prompt encoder, mask decoder,
``postprocess_masks``) but sends a batch of images through the encoder at once, and every
box of an image through the decoder at once.

MedSAM weights load into the same vit_b but were trained on other input: ``preprocess="medsam"``
follows MedSAM's own inference (``MedSAM_Inference.py``): the image resized to 1024 x 1024
(bicubic, anti-aliased, no aspect kept, no padding), scaled to [0, 1] by its min and max with
no mean/std, boxes scaled by 1024 / W and 1024 / H, and the low-resolution mask's
probabilities resized straight to the image and cut at 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide

REGISTRY_TYPES = ("vit_b", "vit_l", "vit_h")
Preprocess = Literal["sam", "medsam"]
# Images per encoder pass under ``batch_size: auto``. On a GPU 2 images (2 x 4096 tokens) leave the
# encoder's ViT underfed, and inference keeps no activations for a backward pass, so 8 stays far
# from an 80 GB card's memory even with vit_h (not measured yet: bench/devcheck.sh). On the CPU a
# pass already uses every core.
AUTO_BATCH = {"cuda": 8, "cpu": 2}
# Decoding, resizing and normalizing run in threads (PIL, skimage and torch release the GIL).
PREPROCESS_THREADS = 4


def batch_size(setting: int | Literal["auto"], device: str) -> int:
    """Images per encoder pass: ``setting``, or under ``auto`` the device type's number."""
    if setting != "auto":
        return setting
    return AUTO_BATCH["cuda" if str(device).startswith("cuda") else "cpu"]


class SamLoadError(RuntimeError):
    pass


def build_custom_sam(
    image_size: int = 1024,
    patch_size: int = 16,
    encoder_embed_dim: int = 768,
    encoder_depth: int = 12,
    encoder_num_heads: int = 12,
    encoder_global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    window_size: int = 14,
    prompt_embed_dim: int = 256,
    decoder_depth: int = 2,
    decoder_mlp_dim: int = 2048,
    decoder_num_heads: int = 8,
    iou_head_hidden_dim: int = 256,
) -> Sam:
    """A Sam of any size from the library's own classes (defaults = vit_b's shape)."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    grid = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth,
                embedding_dim=prompt_embed_dim,
                mlp_dim=decoder_mlp_dim,
                num_heads=decoder_num_heads,
            ),
            transformer_dim=prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_head_hidden_dim,
        ),
    )
    return sam.eval()


def load_sam(
    model_type: str,
    checkpoint: str | Path | None,
    architecture: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> Sam:
    """vit_b/l/h (SAM, or MedSAM in vit_b) from a checkpoint, or a custom-sized Sam.

    Weights load on the CPU first (``map_location``) so checkpoints saved from a GPU open on
    any machine, and only as tensors (``weights_only``): a checkpoint is data, not code.
    """
    if model_type in REGISTRY_TYPES:
        if checkpoint is None:
            raise SamLoadError(f"model_type {model_type} needs a checkpoint (random weights localize nothing)")
        sam = sam_model_registry[model_type](checkpoint=None)
    elif model_type == "custom":
        sam = build_custom_sam(**dict(architecture or {}))
    else:
        raise SamLoadError(f"unknown SAM model_type {model_type!r}; expected one of {REGISTRY_TYPES} or custom")
    if checkpoint is not None:
        path = Path(checkpoint)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise SamLoadError(f"{path}: cannot read SAM checkpoint: {exc}") from exc
        # Fine-tuning scripts (MedSAM's among them) sometimes save {"model": state_dict}.
        for wrapper in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        try:
            sam.load_state_dict(state)
        except RuntimeError as exc:
            raise SamLoadError(f"{path}: does not fit model_type {model_type}: {str(exc)[:500]}") from exc
    return sam.to(device).eval()


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """SAM reads HxWx3 uint8; 16-bit images are stretched over their own range first."""
    if pixels.dtype != np.uint8:
        values = pixels.astype(np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        pixels = np.round(scaled * 255).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels)


@dataclass(frozen=True)
class Prompt:
    """Boxes (N, 4) x0 y0 x1 y1, or foreground points (N, 2) x y, in image pixels."""

    boxes: np.ndarray | None = None
    points: np.ndarray | None = None


@dataclass(frozen=True)
class Segmentation:
    mask: np.ndarray  # (H, W) bool: union of the chosen mask of every prompt
    predicted_iou: np.ndarray  # (N,) SAM's predicted IoU of each chosen mask (one per box; one for all points)


class SamSegmenter:
    """``encoder_bf16``: the image encoder (nearly all of SAM's compute) under bf16 autocast; its
    embeddings return to fp32 for the prompt decoder."""

    def __init__(self, sam: Sam, preprocess: Preprocess = "sam", encoder_bf16: bool = False):
        if preprocess not in ("sam", "medsam"):
            raise ValueError(f"unknown SAM preprocessing {preprocess!r}; expected sam or medsam")
        self.sam = sam
        self.preprocess = preprocess
        self.encoder_bf16 = encoder_bf16
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @torch.no_grad()
    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[Prompt]]) -> list[list[Segmentation]]:
        """One encoder pass for all ``images``; then every prompt of each image is decoded.

        Box prompts are unambiguous, so SAM returns its single mask per box; a set of points
        is ambiguous, so SAM returns three masks and the one with the highest predicted IoU
        is kept.
        """
        if len(images) != len(prompts):
            raise ValueError("one list of prompts per image")
        if not images:
            return []
        inputs, sizes = self.model_inputs(images)
        with torch.autocast(self.sam.device.type, dtype=torch.bfloat16, enabled=self.encoder_bf16):
            embeddings = self.sam.image_encoder(inputs).float()
        return [
            [self._decode(embedding[None], size, tuple(image.shape[:2]), prompt) for prompt in image_prompts]
            for image, image_prompts, size, embedding in zip(images, prompts, sizes, embeddings)
        ]

    def model_inputs(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The encoder's batch (N, 3, side, side) and each image's size inside it; the images are
        prepared in parallel threads, each exactly as alone."""
        with ThreadPoolExecutor(min(PREPROCESS_THREADS, len(images))) as pool:
            prepared = list(pool.map(lambda image: self._model_input(to_rgb8(image)), images))
        return torch.stack([tensor for tensor, _ in prepared]), [size for _, size in prepared]

    def _model_input(self, rgb: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, side, side) encoder input and the image's size inside it: SAM's resize, mean/std and
        padding, or MedSAM's resize and min-max (the whole square)."""
        device = self.sam.device
        if self.preprocess == "sam":
            resized = torch.as_tensor(self.transform.apply_image(rgb), device=device).permute(2, 0, 1)
            return self.sam.preprocess(resized), tuple(resized.shape[-2:])
        from skimage.transform import resize

        side = self.sam.image_encoder.img_size
        # As MedSAM's inference: bicubic with anti-aliasing, back to uint8 by truncation, then min-max to [0, 1].
        square = resize(rgb, (side, side), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        scaled = (square - square.min()) / np.clip(float(square.max()) - float(square.min()), 1e-8, None)
        return torch.as_tensor(scaled, dtype=torch.float32, device=device).permute(2, 0, 1), (side, side)

    def _to_model_frame(self, xy: np.ndarray, original: tuple) -> np.ndarray:
        """Image pixels (..., 2k) as x, y pairs -> the encoder input's pixels."""
        if self.preprocess == "sam":
            shape = xy.shape
            return self.transform.apply_coords(xy.reshape(-1, 2), original).reshape(shape)
        side = self.sam.image_encoder.img_size
        height, width = original
        return xy * np.tile([side / width, side / height], xy.shape[-1] // 2)

    def _decode(self, embedding: torch.Tensor, input_size: tuple, original: tuple, prompt: Prompt) -> Segmentation:
        device = self.sam.device
        if prompt.boxes is not None and len(prompt.boxes):
            boxes = self._to_model_frame(np.asarray(prompt.boxes, dtype=np.float64), original)
            points, boxes_t, multimask = None, torch.as_tensor(boxes, dtype=torch.float, device=device), False
        elif prompt.points is not None and len(prompt.points):
            coords = self._to_model_frame(np.asarray(prompt.points, dtype=np.float64), original)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
            labels_t = torch.ones(coords_t.shape[:2], dtype=torch.int, device=device)
            points, boxes_t, multimask = (coords_t, labels_t), None, True
        else:
            raise ValueError("a prompt needs boxes or points")
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes_t, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        if self.preprocess == "sam":
            masks = self.sam.postprocess_masks(low_res, input_size, original) > self.sam.mask_threshold
        else:
            masks = F.interpolate(torch.sigmoid(low_res), size=original, mode="bilinear", align_corners=False) > 0.5
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=device)
        return Segmentation(
            mask=masks[rows, best].any(dim=0).cpu().numpy(), predicted_iou=iou[rows, best].float().cpu().numpy()
        )
