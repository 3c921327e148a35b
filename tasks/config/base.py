"""What every config model shares: frozen, unknown fields refused, fields marked by how they
count in a cache key.

Every stage config is frozen and forbids unknown fields, so a typo in a run file is an
error naming the field rather than a silently ignored option (and a silently unchanged
cache key).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# How the stage runs, not what it makes (concurrency, devices, timeouts, cache folders, the names
# of key variables): left out of every key.
OPERATIONAL = {"operational": True}
# A path whose *content* defines the output (a model folder, a checkpoint, a maps folder): the
# store adds the content's digest as an input (tasks.store.manifest.content_inputs) and the
# path itself is left out of the key, so a renamed copy is a hit and new bytes under the same
# name are a miss.
BY_CONTENT = {"content": "instead_of_path"}
# Set at run time when another field of the same config is set (a served endpoint's URL and model
# name come from the server the run starts for the field ``serve``): then left out of every key,
# like an operational field; otherwise part of it.
OPERATIONAL_WHEN_SERVED = {"operational_when": "serve"}
# A data root: a folder, or a file whose folder holds what it refers to (a JSONL's images). Its
# whole content is an input, and the path stays part of the key (rows record its files' paths).
DATA_ROOT = {"content": "data_root"}


def _usable(setting: str) -> str:
    from models import precision  # torch loads only where a device is asked for

    return precision.check(setting) if setting == "cuda" else setting


# Where a stage's model runs: auto (the GPU when torch can use one, logged), cpu, or cuda (an error
# at load time where no GPU is usable, not days on the CPU).
Device = Annotated[Literal["auto", "cpu", "cuda"], AfterValidator(_usable)]


def device_field(what: str) -> Any:
    return Field(
        json_schema_extra=OPERATIONAL,
        default="auto",
        description=f"Where {what} runs: auto (a usable GPU, else the CPU; the log says which), cpu, or cuda "
        "(refused at config load where torch sees no usable GPU)",
    )


def max_pixels_field() -> Any:
    return Field(
        default=28 * 28 * 1280,
        ge=28 * 28,
        description=(
            "Qwen2-VL / Qwen2.5-VL: resize images to at most this many pixels (28 x 28 per image token; the default "
            "is Qwen's documented 1280 tokens; checkpoints ship 12.8 M, ~10k tokens for a full-resolution "
            "radiograph); a lower bound in the checkpoint wins; None: the checkpoint's. Other families: unused"
        ),
    )


def marker(field: Any, name: str) -> Any:
    extra = field.json_schema_extra
    return extra.get(name) if isinstance(extra, dict) else None


def identity(config: BaseModel) -> dict[str, Any]:
    """The config as it defines a stage's output: every field but the operational ones and the
    paths identified by content instead (``BY_CONTENT``). Cache keys hash this, so tuning how a
    stage runs never recomputes what it produced; manifests still echo the whole config."""

    def value(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return identity(v)
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        return v

    return {
        name: value(getattr(config, name))
        for name, field in type(config).model_fields.items()
        if not marker(field, "operational")
        and marker(field, "content") != "instead_of_path"
        and not _set(config, marker(field, "operational_when"))
    }


def _set(config: BaseModel, name: str | None) -> bool:
    return name is not None and getattr(config, name, None) is not None


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


# A name that becomes part of a file or folder name (a set, a data set, a split, a prompt): letters,
# digits, '.', '_' and '-', not starting with '.' - never a path, never '..', never hidden.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def plain_name(value: str) -> str:
    if not PLAIN_NAME.fullmatch(value):
        raise ValueError(
            f"{value[:80]!r} is not a plain name (1-128 letters, digits, '.', '_', '-'; first a letter or digit)"
        )
    return value


Name = Annotated[str, AfterValidator(plain_name)]
