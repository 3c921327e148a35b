"""An OpenAI-compatible endpoint: shared by the hallucinate stage and the judges."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field

from tasks.config.base import OPERATIONAL, StageConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class EndpointConfig(StageConfig):
    """An OpenAI-compatible chat endpoint (GPT-4o, vLLM, llama.cpp server, ...).

    The API key never appears here: only the name of the environment variable (or Prefect
    Secret block) that holds it, so config dumps and manifests can be shared.
    """

    base_url: str = Field(default="http://127.0.0.1:8000/v1", description="Up to and including /v1")
    model: str = Field(default="local", description="Model name sent with every request")
    api_key_env: str | None = Field(
        json_schema_extra=OPERATIONAL,
        default=None,
        description="Environment variable holding the API key; none for keyless local servers",
    )
    api_key_secret: str | None = Field(
        json_schema_extra=OPERATIONAL,
        default=None,
        description="Prefect Secret block holding the API key (used when api_key_env is unset)",
    )
    timeout_s: float = Field(
        json_schema_extra=OPERATIONAL, default=60.0, gt=0, description="Per-request timeout, seconds"
    )
    max_concurrency: int = Field(
        json_schema_extra=OPERATIONAL, default=8, ge=1, description="Requests in flight at once"
    )
    rpm: float | None = Field(
        json_schema_extra=OPERATIONAL,
        default=None,
        gt=0,
        description="Client-side requests-per-minute limit; none = unlimited",
    )
    max_retries: int = Field(
        json_schema_extra=OPERATIONAL,
        default=4,
        ge=0,
        description="Retries on 429, 5xx, timeouts and connection errors",
    )
    backoff_s: float = Field(
        json_schema_extra=OPERATIONAL,
        default=1.0,
        ge=0,
        description="First retry delay; doubles per retry (a Retry-After header wins)",
    )
    max_backoff_s: float = Field(
        json_schema_extra=OPERATIONAL,
        default=60.0,
        ge=0,
        description="Cap on one retry delay; a Retry-After above it ends the retries at once (reason rate_limited)",
    )
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
