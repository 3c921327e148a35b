"""Stage localize: where a sample's lesion region comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from models.lesions import LESION_TERMS
from tasks.config.base import BY_CONTENT, OPERATIONAL, Device, StageConfig, device_field


class AnnotationConfig(StageConfig):
    """Regions the data set ships: ``mask_path`` (SLAKE mask.png) and ingested ``boxes``.

    Only lesion boxes count (``LocalizeConfig.lesion_terms``). SLAKE's mask.png colours every
    structure by class - organs mostly, some lesions - with no legend beside it, so no pixel of
    it can be told to be a lesion: by default (``mask_marks: organs``) it is never a region.
    """

    prefer: Literal["mask", "boxes", "union"] = Field(
        default="mask",
        description=(
            "When the mask marks lesions (mask_marks: lesions): mask: the mask file, else the lesion boxes; boxes: "
            "the lesion boxes, else the mask; union: both together"
        ),
    )
    mask_marks: Literal["organs", "lesions"] = Field(
        default="organs",
        description=(
            "What a data set's mask file marks. organs: not a lesion region (SLAKE's mask.png: organs and lesions "
            "by colour, no legend); lesions: every non-zero pixel is a lesion (a data set of lesion masks)"
        ),
    )
    confidence: float = Field(default=1.0, ge=0.0, le=1.0, description="Confidence given to annotated regions")


class HeatmapConfig(StageConfig):
    """Saliency maps given per image, thresholded into a region (MedKLIP-style).

    A map is ``<maps>/<image_sha256>.npy|.png`` (one map per image, shared by its questions)
    or ``<maps>/<safe_stem(sample_id)>.npy|.png`` (per sample; checked second). Any size: it
    is resized to the image. An optional ``<maps>/confidences.json`` maps the same names to a
    probability (e.g. MedKLIP's P(disease)) used as the confidence; without it the
    confidence is the map's contrast (mean inside the region minus mean outside, on the
    blurred map scaled to [0, 1]).
    """

    maps: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="Folder of maps (identified by content); required for source=heatmap, optional for sam",
    )
    blur_sigma: float = Field(
        default=0.02, ge=0.0, description="Gaussian blur sigma as a fraction of the image's shorter side"
    )
    blur_kernel_px: int | None = Field(
        default=None,
        ge=3,
        description=(
            "Instead of blur_sigma: a Gaussian kernel of this odd side in pixels, as OpenCV's GaussianBlur((n, n), 0) "
            "(sigma = 0.3 ((n - 1) / 2 - 1) + 0.8, mirrored edges); the release: 15"
        ),
    )
    statistic: Literal["mean", "mean_minus_std", "quantile", "max_fraction"] = Field(
        default="mean",
        description=(
            "Keep map values above: the map's mean; its mean minus its std (the release's rule: on a peaked map that "
            "is most of the image); a quantile of it; or a fraction of its max"
        ),
    )
    quantile: float = Field(default=0.9, gt=0.0, lt=1.0, description="Quantile for statistic=quantile")
    max_fraction: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="Fraction of the max for statistic=max_fraction"
    )

    @field_validator("blur_kernel_px")
    @classmethod
    def _odd_kernel(cls, value: int | None) -> int | None:
        if value is not None and value % 2 == 0:
            raise ValueError(f"a Gaussian kernel side must be odd, got {value}")
        return value


class SamArchitecture(StageConfig):
    """A Sam built from segment_anything's classes for model_type=custom (small test/demo models)."""

    image_size: int = Field(default=1024, description="Input side; a multiple of patch_size")
    patch_size: int = Field(default=16, description="ViT patch side")
    encoder_embed_dim: int = Field(default=768, description="ViT width")
    encoder_depth: int = Field(default=12, description="ViT blocks")
    encoder_num_heads: int = Field(default=12, description="ViT attention heads")
    encoder_global_attn_indexes: list[int] = Field(default=[2, 5, 8, 11], description="Blocks with global attention")
    window_size: int = Field(default=14, description="Window of the other blocks' local attention")
    prompt_embed_dim: int = Field(default=256, description="Prompt/mask decoder width")
    decoder_depth: int = Field(default=2, description="TwoWayTransformer blocks")
    decoder_mlp_dim: int = Field(default=2048, description="TwoWayTransformer MLP width")
    decoder_num_heads: int = Field(default=8, description="TwoWayTransformer heads")
    iou_head_hidden_dim: int = Field(default=256, description="IoU prediction head width")


class SamConfig(StageConfig):
    """segment-anything prompted by the sample's boxes, or by heatmap peaks when it has none."""

    model_type: Literal["vit_b", "vit_l", "vit_h", "custom"] = Field(
        default="vit_b", description="Registry architecture (MedSAM weights: vit_b) or custom (see architecture)"
    )
    checkpoint: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="State dict (.pth); required for vit_b/l/h. Identified by its content, not its name",
    )
    architecture: SamArchitecture = Field(
        default_factory=SamArchitecture, description="Used for model_type=custom only"
    )
    preprocess: Literal["auto", "sam", "medsam"] = Field(
        default="auto",
        description=(
            "Input the weights were trained on. sam: longest side resized to 1024, mean/std, padded; medsam: "
            "resized to 1024 x 1024, min-max to [0, 1], no mean/std (MedSAM's); auto: medsam when the checkpoint's "
            "file name says medsam (medsam_vit_b.pth), else sam"
        ),
    )
    device: Device = device_field("SAM")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="The image encoder's arithmetic: auto = bf16 autocast on a GPU, fp32 on the CPU",
    )
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        json_schema_extra=OPERATIONAL,
        default="auto",
        description="Images encoded per forward pass; auto = 8 on a GPU, 2 on the CPU",
    )
    num_points: int = Field(
        default=3, ge=1, description="Heatmap peaks used as point prompts for samples without boxes"
    )
    box_margin: float | None = Field(
        default=0.1,
        description="Keep mask pixels within the prompt boxes grown by this fraction of their size; None keeps all",
    )

    @model_validator(mode="after")
    def _resolve_auto(self) -> SamConfig:
        # Decided from the file name here, once: the checkpoint is identified by its content (its
        # name is in no key), so the key must hold the preprocessing the name chose.
        if self.preprocess == "auto":
            named_medsam = self.checkpoint is not None and "medsam" in self.checkpoint.name.lower()
            object.__setattr__(self, "preprocess", "medsam" if named_medsam else "sam")
        return self

    @property
    def preprocessing(self) -> Literal["sam", "medsam"]:
        """The preprocessing in effect (``auto`` is resolved when the config is made)."""
        return self.preprocess


LocalizeSource = Literal["annotation", "sam", "heatmap", "attention"]


class AttentionConfig(StageConfig):
    """A lesion map from the model being aligned: the relevance of the image's tokens to the
    ground-truth answer (models/attention.py), thresholded by the ``heatmap`` rules (blur,
    statistic); the confidence is the map's contrast."""

    model_path: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="The VLM folder (by content); set from the run's top-level model when unset",
    )
    method: Literal["rollout", "gradient"] = Field(
        default="rollout",
        description=(
            "rollout: attention rollout (Abnar & Zuidema 2020); gradient: gradient-weighted attention relevance "
            "(Chefer et al. 2021), one backward pass per batch"
        ),
    )
    through_tower: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "Carry the image tokens' relevance on to the vision tower's patches by the tower's attention rollout (a "
            "tower with global attention moves content between patches). LLaVA family only; auto: on for it"
        ),
    )
    refine: Literal["none", "sam"] = Field(
        default="none",
        description=(
            "sam: the map's peak is a point prompt for segment-anything (localize.sam's model and settings); SAM's "
            "mask replaces the thresholded map when it holds the peak, else the map's region is kept with the reason"
        ),
    )
    device: str = Field(json_schema_extra=OPERATIONAL, default="cpu", description="torch device")
    batch_size: int = Field(json_schema_extra=OPERATIONAL, default=4, ge=1, description="Samples per forward pass")


class LocalizeConfig(StageConfig):
    """Lesion region per sample: a binary mask, the boxes used and a confidence in [0, 1]."""

    source: LocalizeSource = Field(default="annotation", description="Where regions come from (first of the chain)")
    chain: list[LocalizeSource] | None = Field(
        default=None,
        min_length=1,
        description=(
            "Sources tried in order per sample; a sample without a region from one goes to the next. Unset: "
            "[source, attention] when attention.model_path is set (box-less data sets get regions without more "
            "config), else [source]"
        ),
    )
    per_source: dict[str, list[LocalizeSource]] = Field(
        default_factory=dict,
        description="Chains per data set (the samples' dataset name); ingest.sources[].localize fills it",
    )
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    min_visual_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A data set whose share of samples with a region falls below this is named in the run's alerts",
    )
    lesion_terms: list[str] = Field(
        default=list(LESION_TERMS),
        min_length=1,
        description=(
            "A box is a lesion (an annotation region or a SAM prompt) when its label contains one of these as whole "
            "words, case-insensitive, plurals and unspaced labels included ('Brain Tumor', 'Lung Nodules', "
            "'LiverCancer'), and does not negate it ('No Tumor', 'Stone Free Kidney'); organ labels ('Liver') are "
            "not (models/lesions.py, shared with the rules judge). "
            "A box ingested without a label (the generic JSONL's boxes without box_labels; labelled "
            "'lesion') is the user's declared lesion and always counts"
        ),
    )
    annotation: AnnotationConfig = Field(default_factory=AnnotationConfig)
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)
    sam: SamConfig = Field(default_factory=SamConfig)
    min_area_fraction: float = Field(default=0.001, ge=0.0, description="Smaller regions count as no region")
    max_area_fraction: float = Field(
        default=0.95, le=1.0, description="Larger regions count as no region (a whole-image mask localizes nothing)"
    )

    @model_validator(mode="after")
    def _chains(self) -> LocalizeConfig:
        for name, chain in self.per_source.items():
            if not chain:
                raise ValueError(f"per_source.{name}: a chain names at least one source")
        needs_model = "attention" in self.default_chain or any("attention" in c for c in self.per_source.values())
        if needs_model and self.attention.model_path is None:
            raise ValueError("source attention needs a model: set the run's model or localize.attention.model_path")
        random_sam = self.sam.checkpoint is None and self.sam.model_type != "custom"
        if needs_model and self.attention.refine == "sam" and random_sam:
            raise ValueError("attention.refine: sam needs localize.sam.checkpoint (random SAM weights segment nothing)")
        return self

    @property
    def default_chain(self) -> list[str]:
        """The chain of data sets without their own (``chain``, module rules when unset)."""
        if self.chain is not None:
            return list(self.chain)
        if self.attention.model_path is not None and self.source != "attention":
            return [self.source, "attention"]
        return [self.source]

    def chain_for(self, dataset: str) -> list[str]:
        return list(self.per_source.get(dataset, self.default_chain))

    @property
    def sources(self) -> list[str]:
        """Every source some chain uses, in first-use order."""
        every = [s for chain in [self.default_chain, *self.per_source.values()] for s in chain]
        return list(dict.fromkeys(every))
