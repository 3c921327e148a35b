"""An OpenAI-compatible endpoint: shared by the hallucinate stage and the judges."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from tasks.config.base import BY_CONTENT, OPERATIONAL, OPERATIONAL_WHEN_SERVED, StageConfig

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServeConfig(StageConfig):
    """A local model folder the run serves itself: ``transformers serve`` (or ``command``) on a
    free 127.0.0.1 port, started when a stage first needs it, stopped when the run ends (also
    on failure and Ctrl-C). Identified by the folder's content, not its path or port."""

    model: Path = Field(
        json_schema_extra=BY_CONTENT, description="The model folder (transformers format), identified by its content"
    )
    command: list[str] | None = Field(
        json_schema_extra=OPERATIONAL,
        default=None,
        description=(
            "The serving command, {model} {host} {port} {device} filled in (e.g. vllm serve {model} --host {host} "
            "--port {port}); it must answer GET /health. Unset: transformers serve {model} --device {device} "
            "--host {host} --port {port}"
        ),
    )
    device: str = Field(json_schema_extra=OPERATIONAL, default="cpu", description="Device the server runs on")
    threads: int = Field(
        json_schema_extra=OPERATIONAL,
        default=1,
        ge=1,
        description="CPU threads of the server (OMP_NUM_THREADS); 1 is fastest on a machine other work shares",
    )
    startup_timeout_s: float = Field(
        json_schema_extra=OPERATIONAL, default=300.0, gt=0, description="Longest wait for GET /health to answer 200"
    )
    stop_timeout_s: float = Field(
        json_schema_extra=OPERATIONAL,
        default=20.0,
        gt=0,
        description="Wait after SIGTERM (requests in flight finish) before the server is killed",
    )


class EndpointCapabilities(StageConfig):
    """What the endpoint can do; unset = no, so nothing is sent that a plain server refuses.

    A request field an endpoint still refuses (HTTP 400/422) is remembered by the client and
    never sent to it again (models/llm.py)."""

    logprobs: bool = Field(
        default=False,
        description=(
            "Returns top_logprobs of the reply's tokens: judges score by the probability-weighted mean over the "
            "score tokens (G-Eval) instead of parsing the reply"
        ),
    )
    structured_output: bool = Field(
        default=False,
        description=(
            "Honours response_format=json_object: the JSON protocols are used (hallucination, judges) and "
            "response_format is sent. Otherwise few-shot plain-text protocols a small model can follow"
        ),
    )
    images: bool = Field(
        default=False, description="The model reads images (hallucinate.send_images needs it, and allow_images)"
    )


class EndpointConfig(StageConfig):
    """An OpenAI-compatible chat endpoint (GPT-4o, vLLM, llama.cpp server, ...), or a local model
    folder the run serves itself (``serve``).

    The API key never appears here: only the name of the environment variable (or Prefect
    Secret block) that holds it, so config dumps and manifests can be shared.
    """

    base_url: str = Field(
        json_schema_extra=OPERATIONAL_WHEN_SERVED,
        default="http://127.0.0.1:8000/v1",
        description="Up to and including /v1 (with serve: set by the run)",
    )
    model: str = Field(
        json_schema_extra=OPERATIONAL_WHEN_SERVED,
        default="local",
        description="Model name sent with every request (with serve: the served folder's path, set by the run)",
    )
    serve: ServeConfig | None = Field(
        default=None,
        description=(
            "Serve this local model folder for the run instead of calling base_url: `serve: data/models/x` or "
            "`serve: {model: data/models/x, threads: 1}`"
        ),
    )
    capabilities: EndpointCapabilities = Field(default_factory=EndpointCapabilities)
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

    @model_validator(mode="before")
    @classmethod
    def _serve_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("serve"), (str, Path)):
            return {**data, "serve": {"model": data["serve"]}}
        return data

    @model_validator(mode="after")
    def _served_or_called(self) -> EndpointConfig:
        fields = type(self).model_fields
        # Given and not the default (a full dump, `mmedpo config show`, holds the defaults and loads back).
        given = {
            n for n in ("base_url", "model") if n in self.model_fields_set and getattr(self, n) != fields[n].default
        }
        if self.serve is not None and given:
            raise ValueError(f"serve: the run sets {' and '.join(sorted(given))} of a served endpoint; leave it unset")
        return self

    @property
    def is_local(self) -> bool:
        return (urlsplit(self.base_url).hostname or "") in LOCAL_HOSTS

    @property
    def images_allowed(self) -> bool:
        return self.is_local if self.allow_images is None else self.allow_images
