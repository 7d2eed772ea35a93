"""A pipeline's `/pipelines/schemas` entry: Scope's `config_schema` with `ui` hints on its
properties, and the metadata keys, built from the pipeline class (`pipeline.hints` holds the
hint helper itself).
"""

from __future__ import annotations

import copy
from typing import Any

from .base import Pipeline
from .hints import SLIDER_MAX_SPAN, ui
from .params import ParameterUpdate


def _runtime_hints(cls: type[Pipeline]) -> dict[str, dict[str, Any]]:
    """Runtime keys the pipeline acts on, as Scope's composite controls (live while streaming)."""
    hints: dict[str, dict[str, Any]] = {}
    if cls.supports_prompts:  # our prompted pipelines all use the step list and noise_scale
        hints["denoising_step_list"] = ui(40, "Denoising steps", component="denoising_steps",
                                          load=False)
        hints["noise_scale"] = ui(41, "Noise scale", component="noise", load=False)
    if cls.supports_cache_management:
        hints["manage_cache"] = ui(50, "Manage cache", component="cache", load=False)
    if cls.supports_kv_cache_bias:
        hints["kv_cache_attention_bias"] = ui(51, "KV cache bias", component="cache", load=False)
    if cls.supports_vace:
        hints["vace_enabled"] = ui(30, "VACE", component="vace")
        hints["vace_context_scale"] = ui(31, "VACE scale", component="vace", load=False)
    if cls.supports_lora:
        hints["lora_scales"] = ui(60, "LoRA", component="lora", load=False)
    return hints


def config_schema(cls: type[Pipeline]) -> dict[str, Any]:
    """One JSON schema of the runtime and load parameters, with Scope's `ui` hints.

    The load parameters win where a key is both (`seed`): Scope treats it as a load parameter.
    """
    runtime = ParameterUpdate.model_json_schema()
    load = cls.Params.model_json_schema()
    properties: dict[str, Any] = copy.deepcopy(runtime.get("properties", {}))
    for key, extra in _runtime_hints(cls).items():
        if key in properties:
            properties[key].update(copy.deepcopy(extra))
    for key, prop in load.get("properties", {}).items():
        if key == "vace_enabled" and not cls.supports_vace:
            prop = {k: v for k, v in prop.items() if k != "ui"}
        if key in properties and "ui" in properties[key] and "ui" not in prop:
            continue  # a runtime composite control already covers it
        properties[key] = copy.deepcopy(prop)
    for prop in properties.values():
        if "ui" in prop and "component" not in prop["ui"]:
            low, high = prop.get("minimum"), prop.get("maximum")
            if low is not None and high is not None and high - low > SLIDER_MAX_SPAN:
                del prop["maximum"]
    schema: dict[str, Any] = {"title": f"{cls.name} parameters", "type": "object",
                              "properties": properties}
    defs = {**runtime.get("$defs", {}), **load.get("$defs", {})}
    if defs:
        schema["$defs"] = defs
    return schema


def metadata(cls: type[Pipeline]) -> dict[str, Any]:
    """Scope's per-pipeline metadata keys, from the pipeline's class attributes."""
    return {
        "version": cls.version,
        "supports_lora": cls.supports_lora,
        "supports_vace": cls.supports_vace,
        "supports_cache_management": cls.supports_cache_management,
        "supports_kv_cache_bias": cls.supports_kv_cache_bias,
        "supports_quantization": cls.supports_quantization,
        "estimated_vram_gb": cls.estimated_vram_gb,
        "min_dimension": cls.min_dimension,
        "requires_models": cls.requires_models,
        "usage": list(cls.usage),
        "docs_url": cls.docs_url,
        "inputs": list(cls.inputs),
        "outputs": list(cls.outputs),
        "recommended_quantization_vram_threshold": None,
        "default_temporal_interpolation_method": "linear",
        "default_temporal_interpolation_steps": 0,
        "default_spatial_interpolation_method": "linear",
        "modified": False,
        "plugin_name": None,
    }
