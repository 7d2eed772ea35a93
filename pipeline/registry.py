"""The pipeline registry: ids → classes, and the `/pipelines/schemas` entries built from them.

It knows no concrete pipeline: `pipeline.models` registers the built-in ones when the `pipeline`
package is imported, and tests register their own, so the serving runtime looks pipelines up
here without importing a model."""

from __future__ import annotations

from typing import Any

from .base import Pipeline
from .schema import config_schema, metadata

_PIPELINES: dict[str, type[Pipeline]] = {}


def register(cls: type[Pipeline]) -> type[Pipeline]:
    _PIPELINES[cls.id] = cls
    return cls


class UnknownPipelineError(KeyError):
    def __init__(self, pipeline_id: str) -> None:
        super().__init__(pipeline_id)
        self.pipeline_id = pipeline_id

    def __str__(self) -> str:
        return f"Unknown pipeline {self.pipeline_id!r}. Available: {', '.join(available())}"


def available() -> list[str]:
    return sorted(_PIPELINES)


def get(pipeline_id: str) -> type[Pipeline]:
    try:
        return _PIPELINES[pipeline_id]
    except KeyError:
        raise UnknownPipelineError(pipeline_id) from None


def schema(cls: type[Pipeline]) -> dict[str, Any]:
    """One entry of `GET /api/v1/pipelines/schemas`: ours plus Scope's metadata keys."""
    load_defaults = cls.Params()
    return {
        "id": cls.id,
        "name": cls.name,
        "description": cls.description,
        "supported_modes": list(cls.modes),
        "default_mode": cls.default_mode(),
        "supports_prompts": cls.supports_prompts,
        **metadata(cls),
        "config_schema": config_schema(cls),
        "load_schema": cls.Params.model_json_schema(),
        "mode_defaults": {m: _mode_defaults(d.given(), load_defaults)
                          for m, d in cls.mode_defaults().items()},
    }


def _mode_defaults(given: dict[str, Any], load: Any) -> dict[str, Any]:
    """Our defaults, plus the names Scope's app reads them by (`denoising_steps`, size)."""
    out = {**given, "height": load.height, "width": load.width}
    if "denoising_step_list" in given:
        out["denoising_steps"] = given["denoising_step_list"]
    return out


def schemas() -> dict[str, dict[str, Any]]:
    return {pid: schema(cls) for pid, cls in sorted(_PIPELINES.items())}
