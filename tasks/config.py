"""Typed configuration: one model per stage, one RunConfig per run (one YAML file).

Every stage config is frozen and forbids unknown fields, so a typo in a run file is an
error naming the field rather than a silently ignored option (and a silently unchanged
cache key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


OPERATIONAL = {"operational": True}


def identity(config: BaseModel) -> dict[str, Any]:
    """The config as it defines a stage's output: every field but the operational ones
    (marked ``json_schema_extra=OPERATIONAL``: concurrency, devices, timeouts, cache folders,
    the names of key variables). Cache keys hash this, so tuning how a stage runs never
    recomputes what it produced; manifests still echo the whole config."""

    def value(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return identity(v)
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        return v

    return {
        name: value(getattr(config, name))
        for name, field in type(config).model_fields.items()
        if not (isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("operational"))
    }


SourceFormat = Literal["slake", "vqa-rad", "r2gen", "pathvqa", "jsonl"]


class SourceConfig(StageConfig):
    """One data set to ingest, in its on-disk format as distributed."""

    format: SourceFormat
    root: Path = Field(description="The data set's folder (for jsonl: the .jsonl file or a folder of them)")
    name: str | None = Field(default=None, description="Data set name recorded per sample; defaults by format")
    splits: list[str] | None = Field(default=None, description="Keep only these splits; all when unset")


class IngestConfig(StageConfig):
    sources: list[SourceConfig] = Field(default_factory=list)
    languages: list[str] = Field(default=["en"], description="Question languages kept; other rows go to rejects")
    max_image_pixels: int = Field(default=50_000_000, description="Larger images are rejected (decompression bombs)")
    min_image_side: int = Field(default=16, description="Images with a smaller side are rejected as unusable")
    dicom_window: bool = Field(default=True, description="Apply the VOI window stored in a DICOM file")


class AssembleConfig(StageConfig):
    """Which pairs make the preference set, and what counts as test-split leakage."""

    text_pairs: bool = Field(default=True, description="Build text pairs (ground truth vs hallucination); off = the paper's visual-only ablation")
    visual_pairs: bool = Field(default=True, description="Build visual pairs (original vs lesion-noised image); off = text-only ablation")
    test_splits: list[str] = Field(default=["test"], description="Splits held out: no pairs from them, and pairs leaking into them are dropped")
    near_duplicate_bits: int | None = Field(
        default=8, ge=0, le=256,
        description="Also drop pairs whose image is within this many bits (of 256) of a test image's perceptual hash: re-encoded or resized copies; None turns the check off",
    )
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class EndpointConfig(StageConfig):
    """An OpenAI-compatible chat endpoint (GPT-4o, vLLM, llama.cpp server, ...).

    The API key never appears here: only the name of the environment variable (or Prefect
    Secret block) that holds it, so config dumps and manifests can be shared.
    """

    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="Up to and including /v1")
    model: str = Field(default="local", description="Model name sent with every request")
    api_key_env: str | None = Field(json_schema_extra=OPERATIONAL, default=None, description="Environment variable holding the API key; none for keyless local servers")
    api_key_secret: str | None = Field(json_schema_extra=OPERATIONAL, default=None, description="Prefect Secret block holding the API key (used when api_key_env is unset)")
    timeout_s: float = Field(json_schema_extra=OPERATIONAL, default=60.0, gt=0, description="Per-request timeout, seconds")
    max_concurrency: int = Field(json_schema_extra=OPERATIONAL, default=8, ge=1, description="Requests in flight at once")
    rpm: float | None = Field(json_schema_extra=OPERATIONAL, default=None, gt=0, description="Client-side requests-per-minute limit; none = unlimited")
    max_retries: int = Field(json_schema_extra=OPERATIONAL, default=4, ge=0, description="Retries on 429, 5xx, timeouts and connection errors")
    backoff_s: float = Field(json_schema_extra=OPERATIONAL, default=1.0, ge=0, description="First retry delay; doubles per retry (a Retry-After header wins)")
    max_backoff_s: float = Field(json_schema_extra=OPERATIONAL, default=60.0, ge=0, description="Cap on one retry delay; a Retry-After above it ends the retries at once (reason rate_limited)")
    allow_images: bool | None = Field(
        default=None,
        description="May this endpoint receive images? Unset: only local endpoints (127.0.0.1, localhost, ::1) may",
    )

    @property
    def is_local(self) -> bool:
        return (urlsplit(self.base_url).hostname or "") in LOCAL_HOSTS

    @property
    def images_allowed(self) -> bool:
        return self.is_local if self.allow_images is None else self.allow_images

JudgeKind = Literal["rules", "endpoint", "transformers"]


class JudgeConfig(StageConfig):
    """One member of the clinical-relevance panel.

    ``endpoint``: a model behind an OpenAI-compatible server (Med42 or BioMistral on vLLM or
    llama.cpp, GPT-4o); ``transformers``: a local causal LM folder; ``rules``: the offline
    scorer driven by the error type the hallucinate stage recorded (needs neither).
    """

    name: str = Field(default="rules", description="Label recorded with every round this judge plays; unique in the panel")
    kind: JudgeKind = Field(default="rules", description="rules | endpoint | transformers")
    endpoint: EndpointConfig | None = Field(default=None, description="endpoint judges: the server and model name")
    model_path: str | None = Field(default=None, description="transformers judges: the local model folder")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 keeps scores reproducible")
    max_tokens: int = Field(default=256, gt=0, description="Longest reply a judge may write")
    parse_retries: int = Field(default=2, ge=0, description="Re-asks after a reply without a usable score before the judge is excluded for that sample")

    @model_validator(mode="after")
    def _needs(self) -> "JudgeConfig":
        if self.kind == "endpoint" and self.endpoint is None:
            raise ValueError(f"judge {self.name!r}: an endpoint judge needs endpoint (base_url, model)")
        if self.kind == "transformers" and not self.model_path:
            raise ValueError(f"judge {self.name!r}: a transformers judge needs model_path (a local folder)")
        return self


NormalizerKind = Literal["paper", "zscore", "none"]


class NormalizerConfig(StageConfig):
    """Raw clinical-relevance score -> DPO weight, computed per pair type (text / visual).

    ``paper``: ``z = (s - mu) / sqrt(sigma2)`` with the paper's fixed mu and sigma^2, then
    ``weight = clip(anchor + gain * z, lo, hi)``; ``zscore``: z from the batch's own mean and
    std, ``weight = mid + (hi - lo) / 2 * clip(z, -span, span) / span``; ``none``: the raw score
    (the released code's behaviour: a 0 score silently drops its pair).
    """

    kind: NormalizerKind = Field(default="paper", description="paper | zscore | none")
    mu: float = Field(default=1.0, description="paper: centre of the z-score (appendix: mu = 1)")
    sigma2: float = Field(default=0.1, gt=0.0, description="paper: variance of the z-score (appendix: sigma^2 = 0.1)")
    anchor: float = Field(default=1.25, description="paper: weight of a score equal to mu (a fully relevant error)")
    gain: float = Field(default=0.25, description="paper: weight change per standard deviation of score")
    span: float = Field(default=2.0, gt=0.0, description="zscore: |z| that reaches lo / hi (larger |z| is clipped)")
    lo: float = Field(default=0.75, description="Smallest weight (paper: 0.75)")
    hi: float = Field(default=1.25, description="Largest weight (paper: 1.25)")

    @model_validator(mode="after")
    def _range(self) -> "NormalizerConfig":
        if self.lo > self.hi:
            raise ValueError(f"normalizer: lo {self.lo} > hi {self.hi}")
        return self


ScoreMode = Literal["debate", "mean"]


class ScoreConfig(StageConfig):
    """Clinical-relevance scoring of text pairs by a judge panel, visual pairs by localizer confidence."""

    judges: list[JudgeConfig] = Field(default_factory=lambda: [JudgeConfig()], description="The panel, in speaking order")
    mode: ScoreMode = Field(default="debate", description="debate: sequential adopt-or-rescore; mean: independent scores averaged")
    max_rounds: int = Field(default=5, ge=1, description="debate: most scored rounds before falling back to the mean of the score history")
    agreement_tolerance: float = Field(default=0.0, ge=0.0, le=1.0, description="debate: a re-score this close to the previous score counts as adopting it")
    prompt_version: str = Field(default="v1", description="Judge prompt templates models/prompts/judge_{first,followup}_<version>.txt")
    concurrency: int = Field(json_schema_extra=OPERATIONAL, default=8, ge=1, description="Samples judged at once (endpoints add their own request limits)")
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)

    @model_validator(mode="after")
    def _panel(self) -> "ScoreConfig":
        names = [j.name for j in self.judges]
        if not names:
            raise ValueError("score: the judge panel is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"score: judge names must be unique, got {names}")
        return self


class TargetSamplingConfig(StageConfig):
    """The target VLM sampled for candidate hallucinations (the paper's procedure)."""

    model_path: Path | None = Field(default=None, description="Local LLaVA-family checkpoint folder (transformers format)")
    num_samples: int = Field(default=4, ge=1, description="Answers sampled per sample")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (must be > 0 to get distinct candidates)")
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass")
    max_new_tokens: int = Field(default=128, ge=1, description="Longest sampled answer, tokens")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate() call")
    seed: int = Field(default=0, description="Sampling seed")
    device: str | None = Field(default=None, description="torch device; unset: cuda when available, else cpu")


class HallucinateConfig(StageConfig):
    """Stage 1: a clinically plausible wrong answer (the rejected side of a text pair) per sample."""

    backend: Literal["rules", "llm", "target"] = Field(
        default="rules", description="rules: offline clinical perturbations; llm: error injection by an LLM; target: sample the target VLM, an LLM selects or rewrites"
    )
    splits: list[str] | None = Field(default=["train"], description="Only samples of these splits get a rejection; all when unset")
    min_length_ratio: float = Field(default=0.5, gt=0, description="Shortest rejection allowed, as a multiple of the ground truth's length")
    max_length_ratio: float = Field(default=2.0, gt=0, description="Longest rejection allowed, as a multiple of the ground truth's length (the paper's data: ~6x, a length shortcut)")
    length_floor_chars: int = Field(default=6, ge=1, description="Lengths under this count as this many characters, so 'CT' vs 'X-ray' is not a length violation")
    max_attempts: int = Field(default=3, ge=1, description="LLM answers tried per sample before it is reported as failed")
    seed: int = Field(default=0, description="Seeds the rules' choice among applicable perturbations (with the sample id)")
    llm: EndpointConfig = Field(default_factory=EndpointConfig, description="Injection / selector endpoint (llm and target backends)")
    temperature: float = Field(default=0.7, ge=0, description="Injection / selector sampling temperature")
    json_mode: bool = Field(default=False, description="Ask the endpoint for response_format=json_object (not every server supports it)")
    send_images: bool = Field(default=False, description="Send the image with the injection prompt (only to endpoints allowed to receive images)")
    cache_dir: Path | None = Field(json_schema_extra=OPERATIONAL, default=None, description="LLM response cache; unset: <store>/llm-cache")
    inject_prompt: str = Field(default="hallucinate_inject_v1", description="Template in tasks/prompts/ for error injection / rewriting")
    select_prompt: str = Field(default="hallucinate_select_v1", description="Template in tasks/prompts/ for choosing among sampled answers")
    target: TargetSamplingConfig = Field(default_factory=TargetSamplingConfig)

    @model_validator(mode="after")
    def _check(self) -> "HallucinateConfig":
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("min_length_ratio must be below max_length_ratio")
        if self.backend == "target" and self.target.model_path is None:
            raise ValueError("backend 'target' needs target.model_path")
        return self


class AnnotationConfig(StageConfig):
    """Regions the data set ships: ``mask_path`` (SLAKE mask.png) and ingested ``boxes``."""

    prefer: Literal["mask", "boxes", "union"] = Field(
        default="mask",
        description="mask: the mask file, else the boxes; boxes: the boxes, else the mask; union: both together",
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

    maps: Path | None = Field(default=None, description="Folder of maps; required for source=heatmap, optional for sam")
    blur_sigma: float = Field(default=0.02, ge=0.0, description="Gaussian blur sigma as a fraction of the image's shorter side")
    statistic: Literal["mean", "quantile", "max_fraction"] = Field(
        default="mean", description="Keep map values above: the map's mean, a quantile of it, or a fraction of its max"
    )
    quantile: float = Field(default=0.9, gt=0.0, lt=1.0, description="Quantile for statistic=quantile")
    max_fraction: float = Field(default=0.5, gt=0.0, lt=1.0, description="Fraction of the max for statistic=max_fraction")


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
        default=None, description="State dict (.pth); required for vit_b/l/h. Keyed by path: version the file name"
    )
    architecture: SamArchitecture = Field(default_factory=SamArchitecture, description="Used for model_type=custom only")
    device: str = Field(json_schema_extra=OPERATIONAL, default="cpu", description="torch device")
    batch_size: int = Field(json_schema_extra=OPERATIONAL, default=2, ge=1, description="Images encoded per forward pass")
    num_points: int = Field(default=3, ge=1, description="Heatmap peaks used as point prompts for samples without boxes")
    box_margin: float | None = Field(
        default=0.1, description="Keep mask pixels within the prompt boxes grown by this fraction of their size; None keeps all"
    )


class LocalizeConfig(StageConfig):
    """Lesion region per sample: a binary mask, the boxes used and a confidence in [0, 1]."""

    source: Literal["annotation", "sam", "heatmap"] = Field(default="annotation", description="Where regions come from")
    annotation: AnnotationConfig = Field(default_factory=AnnotationConfig)
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)
    sam: SamConfig = Field(default_factory=SamConfig)
    min_area_fraction: float = Field(default=0.001, ge=0.0, description="Smaller regions count as no region")
    max_area_fraction: float = Field(
        default=0.95, le=1.0, description="Larger regions count as no region (a whole-image mask localizes nothing)"
    )


class NoiseConfig(StageConfig):
    """Forward-diffusion noise x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps on the lesion region."""

    mode: Literal["local", "global"] = Field(
        default="local", description="local: inside the region only; global: whole image (the paper's ablation), same samples"
    )
    k: int = Field(default=500, ge=1, description="Diffusion step (1..timesteps); POVID used 500")
    timesteps: int = Field(default=1000, ge=1, description="Length T of the linear beta schedule")
    beta_start: float = Field(default=1e-4, gt=0.0, description="beta_1")
    beta_end: float = Field(default=0.02, gt=0.0, lt=1.0, description="beta_T")
    feather_px: float = Field(default=4.0, ge=0.0, description="Noise ramps up over this many pixels inside the region edge")
    seed: int = Field(default=0, description="Mixed with each sample_id into that sample's noise seed")
    workers: int = Field(json_schema_extra=OPERATIONAL, default=2, ge=1, description="Threads noising samples in parallel (PNG codecs and numpy release the GIL)")

    @model_validator(mode="after")
    def _step_in_schedule(self) -> "NoiseConfig":
        if self.k > self.timesteps:
            raise ValueError(f"k={self.k} is past the schedule's last step (timesteps={self.timesteps})")
        if self.beta_end < self.beta_start:
            raise ValueError("beta_end must be at least beta_start")
        return self
class EvaluateConfig(StageConfig):
    """Answer a test split with the base model (and a trained adapter) and score it."""

    model: Path | None = Field(
        default=None,
        description="Base model: a local transformers checkpoint folder. Unset: the evaluated train artifact's "
        "base model (a checkpoint shipped inside it, else the local path it records)",
    )
    splits: list[str] = Field(default=["test"], description="Sample splits evaluated")
    datasets: list[str] | None = Field(default=None, description="Evaluate only these data sets; all when unset")
    max_samples: int | None = Field(
        default=None, ge=1, description="At most this many samples per data set (the first by sample_id); all when unset"
    )
    batch_size: int = Field(default=8, ge=1, description="Prompts generated together")
    max_new_tokens: int = Field(default=64, ge=1, description="Answer length limit for VQA questions")
    report_max_new_tokens: int = Field(default=256, ge=1, description="Answer length limit for generated reports")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding (the default); > 0 samples")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0")
    seed: int = Field(default=0, description="Sampling seed (used when temperature > 0)")
    meteor: bool = Field(default=True, description="Score METEOR (runs pycocoevalcap's jar: needs Java)")
    examples: int = Field(default=10, ge=0, description="Example predictions shown side by side in the UI")


class TrainConfig(StageConfig):
    """Weighted DPO (method.md stage 6). Defaults are the paper's settings except the model:
    unset, a tiny random-weight LLaVA is built locally (demo and tests)."""

    model: Path | None = Field(default=None, description="Local LLaVA-family checkpoint folder; None builds the tiny demo model")
    ref_model: Path | None = Field(default=None, description="Separate frozen reference checkpoint; None = the policy with adapters disabled")
    tiny_seed: int = Field(default=0, description="Seed of the tiny demo model (used when model is None)")
    splits: list[str] = Field(default=["train"], description="Preference-set splits trained on")
    pair_types: list[Literal["text", "visual"]] = Field(default=["text", "visual"], description="Pair kinds trained on")
    beta: float = Field(default=0.1, description="DPO temperature")
    loss_type: list[str] = Field(default=["sigmoid"], description="TRL loss types (pairwise ones); sigmoid = the paper's")
    loss_weights: list[float] | None = Field(default=None, description="Mix of the loss types; None = all 1")
    anchor_coef: float = Field(default=0.0, description="Weight of mDPO's anchor term (0 = off)")
    anchor_margin: float = Field(default=0.0, description="Reward the anchor pushes the chosen side above")
    lora_r: int = Field(default=128, description="LoRA rank")
    lora_alpha: int = Field(default=256, description="LoRA alpha")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout")
    lora_target: str = Field(
        default=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        description="Regex of the modules given adapters (the language model's linear layers)",
    )
    learning_rate: float = Field(default=1e-7, description="Peak learning rate of the LoRA adapters")
    projector_lr: float | None = Field(
        default=2e-5, description="Train the multimodal projector fully at this learning rate (the paper: 2e-5); None keeps it frozen"
    )
    epochs: float = Field(default=3.0, description="Training epochs")
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps (-1 = by epochs)")
    batch_size: int = Field(default=1, description="Pairs per device per micro-batch")
    gradient_accumulation: int = Field(default=4, description="Micro-batches per optimizer step")
    warmup_ratio: float = Field(default=0.03, description="Share of steps spent warming up")
    scheduler: str = Field(default="cosine", description="Learning-rate schedule")
    max_length: int | None = Field(default=1024, description="Truncate prompt+answer to this many tokens")
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for activation memory")
    save_steps: int = Field(default=200, description="Checkpoint every this many steps (for --resume)")
    logging_steps: int = Field(default=10, description="Log metrics every this many steps")
    seed: int = Field(default=0, description="Seed of adapters init, data order and dropout")
    accelerate_config: Path | None = Field(default=None, description="accelerate config (e.g. configs/accelerate/zero3.yaml) to launch multi-GPU")
    num_processes: int | None = Field(default=None, description="Processes for accelerate launch; None = the config's")


class RunnerConfig(StageConfig):
    """Where per-sample shards run. Not part of any key: results do not depend on it."""

    kind: Literal["threads", "dask", "ray"] = Field(
        default="threads", description="threads: this process; dask: a distributed cluster (prefect-dask); ray: a Ray cluster (prefect-ray)"
    )
    address: str | None = Field(
        default=None,
        description="dask: scheduler address (tcp://host:8786); ray: cluster address (ray://host:10001 or auto). "
        "Unset: a local cluster of `workers` processes for the run",
    )
    workers: int = Field(default=2, ge=1, description="threads: threads; dask/ray without address: local worker processes")
    shard_size: int = Field(default=16, ge=1, description="Samples per shard (one Prefect task run each)")
SFTPart = Literal["vision_tower", "projector", "language_model"]


class SFTConfig(StageConfig):
    """Supervised fine-tuning (TRL's SFTTrainer) on a split's ground-truth answers: the
    starting point DPO training refines. Full-parameter training of the chosen parts, so it
    is meant for small models (the tiny LLaVA of the demo and the grounding experiment)."""

    model: Path | None = Field(default=None, description="Local LLaVA-family checkpoint to start from; None builds the tiny random-weight LLaVA")
    tiny_seed: int = Field(default=0, description="Seed of the tiny model's weights (model None)")
    tiny_image_size: int = Field(default=32, ge=8, description="Tiny model: vision tower input side, pixels (lesions must stay visible at it)")
    tiny_patch_size: int = Field(default=8, ge=1, description="Tiny model: vision patch side (image tokens = (image_size / patch_size)^2)")
    tiny_hidden_size: int = Field(default=64, ge=8, description="Tiny model: text decoder width")
    tiny_layers: int = Field(default=2, ge=1, description="Tiny model: text decoder layers")
    tiny_vision: Literal["clip", "siglip"] = Field(
        default="siglip", description="Tiny model: vision tower; an untrained CLIP tower barely sees intensity lesions (models/tiny.py)"
    )
    trainable: list[SFTPart] = Field(
        default=["vision_tower", "projector", "language_model"],
        description="Parts trained (the rest frozen); a random-weight vision tower must be trained for the model to see anything",
    )
    splits: list[str] = Field(default=["train"], description="Sample splits trained on")
    learning_rate: float = Field(default=3e-3, gt=0, description="Peak learning rate")
    epochs: float = Field(default=3.0, gt=0, description="Training epochs")
    batch_size: int = Field(default=32, ge=1, description="Samples per optimizer step")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Share of steps spent warming up")
    scheduler: str = Field(default="cosine", description="Learning-rate schedule")
    max_length: int | None = Field(default=256, description="Truncate prompt+answer to this many tokens")
    seed: int = Field(default=0, description="Seed of data order and dropout")


class GroundingDataConfig(StageConfig):
    """The grounding experiment's synthetic-lesion data set (tasks.grounding_data)."""

    seed: int = Field(default=0, description="Seed of crops, lesions and answers")
    n_train: int = Field(default=600, ge=1, description="Training samples (one question per image)")
    n_val: int = Field(default=96, ge=0, description="Held-out samples whose pairs measure log-prob margins (never trained on)")
    n_test: int = Field(default=200, ge=1, description="Test samples (accuracy, image sensitivity)")
    image_size: int = Field(default=64, ge=16, description="Side of the written images, pixels")
    train_yes_rate: float = Field(default=0.75, ge=0, le=1, description="Share of 'yes' (and of left-half lesions) in the training split: the text prior")
    test_yes_rate: float = Field(default=0.25, ge=0, le=1, description="The same share in the val and test splits (the flipped prior)")
    question_mix: list[float] = Field(default=[0.5, 0.3, 0.2], description="Relative frequency of presence / side / where questions")
    radius_min: float = Field(default=0.15, gt=0, description="Smallest lesion radius, as a fraction of the image side")
    radius_max: float = Field(default=0.25, gt=0, description="Largest lesion radius, as a fraction of the image side")
    contrast_min: float = Field(default=0.5, gt=0, le=1, description="Weakest lesion contrast, as a fraction of the grey range")
    contrast_max: float = Field(default=0.8, gt=0, le=1, description="Strongest lesion contrast")
    bright_rate: float = Field(default=0.5, ge=0, le=1, description="Share of bright lesions (the rest are dark)")
    background_range: tuple[float, float] = Field(
        default=(64.0, 192.0), description="Grey levels (0-255) a background crop is stretched into; lesions reach beyond it"
    )

    @model_validator(mode="after")
    def _ranges(self) -> "GroundingDataConfig":
        if len(self.question_mix) != 3 or min(self.question_mix) < 0 or sum(self.question_mix) <= 0:
            raise ValueError("question_mix: three non-negative weights (presence, side, where), not all zero")
        if self.radius_min > self.radius_max or self.contrast_min > self.contrast_max:
            raise ValueError("radius/contrast: min above max")
        return self


class RunConfig(StageConfig):
    """Everything one run needs; echoed into every stage's manifest (its own section)."""

    name: str = "mmedpo"
    store: Path = Field(default=Path("data/artifacts"), description="Artifact store root")
    sets: Path = Field(default=Path("data/preference_sets"), description="Where preference sets are published (<sets>/<name>/<version>/)")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    hallucinate: HallucinateConfig = Field(default_factory=HallucinateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig, description="Where per-sample shards run (threads, Dask, Ray)")


class ConfigError(ValueError):
    pass


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run file; relative data paths are taken relative to the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read run config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run config must be a mapping, got {type(raw).__name__}")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid run config: {fields}") from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: StageConfig, base: Path) -> StageConfig:
    """Every Path field anywhere in the config tree, made absolute against ``base``.

    Generic on purpose: a stage that adds a path option gets it resolved without touching
    this function.
    """

    def resolve(value):
        if isinstance(value, Path):
            return value if value.is_absolute() else (base / value).resolve()
        if isinstance(value, StageConfig):
            return value.model_copy(update={name: resolve(getattr(value, name)) for name in type(value).model_fields})
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return resolve(config)


ExperimentArm = Literal["sft", "dpo_text", "mmedpo", "mmedpo_global", "mmedpo_unweighted"]


class MeasureConfig(StageConfig):
    """The grounding experiment's measures beyond accuracy (tasks/experiment.py)."""

    noise_k: int = Field(default=500, ge=1, description="Diffusion step of the test-time lesion noise (image sensitivity)")
    noise_seed: int = Field(default=0, description="Seed of the test-time noise (mixed with each sample id)")
    batch_size: int = Field(default=32, ge=1, description="Prompts generated together")
    margin_split: str = Field(default="val", description="Split of the held-out pairs whose chosen-rejected log-prob margins are measured")


class ExperimentConfig(StageConfig):
    """The grounding experiment: each arm's preference set trained on the same SFT checkpoints."""

    name: str = Field(default="grounding", description="Run name (prefixes the arms' set names and flow runs)")
    store: Path = Field(default=Path("data/experiment/artifacts"), description="Artifact store root (shared stages are reused across arms)")
    sets: Path = Field(default=Path("data/experiment/preference_sets"), description="Where the arms' preference sets are published")
    data_root: Path = Field(default=Path("data/experiment/grounding"), description="Where the synthetic data set is written")
    report: Path = Field(default=Path("bench/experiment.md"), description="Markdown report; the plot is written next to it (.png)")
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1, description="Seeds of SFT (model init and data order) and DPO")
    arms: list[ExperimentArm] = Field(
        default=["sft", "dpo_text", "mmedpo", "mmedpo_global", "mmedpo_unweighted"], min_length=1, description="Arms run, in report order"
    )
    data: GroundingDataConfig = Field(
        default_factory=lambda: GroundingDataConfig(
            n_train=400, n_val=128, n_test=400, image_size=32, question_mix=[0.6, 0.4, 0.0], contrast_min=0.8, contrast_max=1.0, radius_min=0.2, radius_max=0.3
        )
    )
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(epochs=6, learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0, batch_size=16),
        description="Stops while the model still answers part of the questions from the text prior, so preference training has room",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=1e-4, projector_lr=1e-4, epochs=2, batch_size=8,
            gradient_accumulation=1, warmup_ratio=0.0, scheduler="constant", max_length=None, gradient_checkpointing=False,
            save_steps=100_000, logging_steps=10,
        )
    )
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
