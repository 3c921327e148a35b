"""What every config model shares: frozen, unknown fields refused, operational fields marked.

Every stage config is frozen and forbids unknown fields, so a typo in a run file is an
error naming the field rather than a silently ignored option (and a silently unchanged
cache key).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


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


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""
