"""What models/ reads of a stage's settings, as its own small types.

models/ is the ground floor: it imports nothing from tasks/ or flows/. Its functions take any
object with these attributes; tasks/config's pydantic classes (TrainConfig, SFTConfig,
EndpointConfig, ServeConfig, JudgeConfig) are the ones a run passes, and
tests/models/test_settings.py checks that each declares every member named here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol


class TrainSettings(Protocol):
    """Weighted DPO with LoRA (models/dpo.py, models/training.py)."""

    model: Path | None
    ref_model: Path | None
    tiny_seed: int
    max_pixels: int | None
    precision: Literal["auto", "bf16", "fp32"]
    beta: float
    loss_type: list[str]
    loss_weights: list[float] | None
    anchor_coef: float
    anchor_margin: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str | None
    init_adapter: Path | None
    learning_rate: float
    projector_lr: float | None
    epochs: float
    max_steps: int
    batch_size: int
    global_batch_size: int
    warmup_ratio: float
    scheduler: str
    max_length: int | None
    gradient_checkpointing: bool
    save_steps: int
    logging_steps: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    dataloader_workers: int | Literal["auto"]

    def accumulation_steps(self, processes: int) -> int: ...


class LaunchSettings(Protocol):
    """Where the training program runs (models/launching.py)."""

    device: Literal["auto", "cpu", "cuda"]
    accelerate_config: Path | None
    num_processes: int | Literal["auto"] | None

    def accumulation_steps(self, processes: int) -> int: ...

    def accelerate_shape(self) -> tuple[int, int]:
        """(machines, processes) the accelerate config declares; (1, 1) without one."""
        ...


class SFTSettings(Protocol):
    """Supervised fine-tuning (models/sft.py)."""

    model: Path | None
    text_model: Path | None
    text_layers: int | None
    tiny_seed: int
    tiny_image_size: int
    tiny_patch_size: int
    tiny_hidden_size: int
    tiny_layers: int
    tiny_vision: Literal["clip", "siglip"]
    trainable: list[Literal["vision_tower", "projector", "language_model"]]
    learning_rate: float
    epochs: float
    batch_size: int
    warmup_ratio: float
    scheduler: str
    max_length: int | None
    gradient_checkpointing: bool
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "bf16", "fp32"]


class ServeSettings(Protocol):
    """A local model folder a run serves (models/serve.py)."""

    model: Path
    command: list[str] | None
    device: str
    threads: int
    startup_timeout_s: float
    stop_timeout_s: float


class EndpointSettings(Protocol):
    """An OpenAI-compatible endpoint, called or served (models/llm.py)."""

    base_url: str
    model: str
    api_key_env: str | None
    api_key_secret: str | None
    capabilities: Any  # logprobs, structured_output, images: booleans
    serve: ServeSettings | None
    max_concurrency: int
    rpm: float | None
    max_retries: int
    backoff_s: float
    max_backoff_s: float
    timeout_s: float

    @property
    def images_allowed(self) -> bool: ...

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> EndpointSettings: ...


# The judge kinds: the config's field type and models/panel.py's table keys (models.registry).
JudgeKind = Literal["rules", "endpoint", "transformers"]


class JudgeSettings(Protocol):
    """One judge of the scoring panel (models/panel.py)."""

    name: str
    kind: JudgeKind
    endpoint: EndpointSettings | None
    model_path: Path | None
    dtype: Literal["float32", "bfloat16", "auto"]
    threads: int | None
    max_tokens: int
    temperature: float
    samples: int
    orders: int
    parse_retries: int
    device: Literal["auto", "cpu", "cuda"]

    @property
    def resolved_protocol(self) -> str | None: ...


class FolderDigests(Protocol):
    """Content digests of folders, remembered by the store (tasks.store.DigestMemo)."""

    def tree(self, root: Path) -> str: ...
