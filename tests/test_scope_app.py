"""What Scope's own web app reads from this server, checked against the shapes its source reads
(daydreamlive/scope `frontend/src`): schemas with `ui` hints and metadata, and the page-load
calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Server, serve_in_thread

# Scope's composite Settings controls (schemaSettings.ts COMPLEX_COMPONENTS).
COMPOSITE = {"vace", "lora", "resolution", "cache", "denoising_steps", "noise", "quantization",
             "image", "custom"}
METADATA: dict[str, type | tuple[type, ...]] = {
    "id": str, "name": str, "description": str, "version": str, "docs_url": (str, type(None)),
    "estimated_vram_gb": (float, int, type(None)), "requires_models": bool,
    "supports_lora": bool, "supports_vace": bool, "usage": list, "supported_modes": list,
    "default_mode": str, "supports_prompts": bool, "supports_cache_management": bool,
    "supports_kv_cache_bias": bool, "supports_quantization": bool, "min_dimension": int,
    "inputs": list, "outputs": list, "mode_defaults": dict, "config_schema": dict,
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough") as srv:
        yield srv


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def widget(prop: dict[str, Any]) -> str | None:
    """The widget Scope's app infers for a property (schemaSettings.ts inferPrimitiveFieldType)."""
    if prop.get("anyOf"):
        subs = [s for s in prop["anyOf"] if s.get("type") != "null"]
        return widget(subs[0]) if subs else None
    if "$ref" in prop or "enum" in prop:
        return "enum"
    kind = prop.get("type")
    if kind == "string":
        return "text"
    if kind in ("integer", "number"):
        return "slider" if "minimum" in prop and "maximum" in prop else "number"
    return "toggle" if kind == "boolean" else None


def settings_fields(schema: dict[str, Any], mode: str) -> list[str]:
    """The keys Scope's Settings panel shows, in its order (getConfigurationFields)."""
    fields = []
    for key, prop in schema["properties"].items():
        hint = prop.get("ui")
        if hint is None or hint.get("category", "configuration") != "configuration":
            continue
        if hint.get("modes") and mode not in hint["modes"]:
            continue
        fields.append((hint.get("order", 999), key))
    return [key for _, key in sorted(fields)]


def test_schemas_carry_scope_metadata_and_settings(http: httpx.Client) -> None:
    pipelines = http.get("/api/v1/pipelines/schemas").json()["pipelines"]
    for pid, entry in pipelines.items():
        for key, kind in METADATA.items():
            assert isinstance(entry[key], kind), (pid, key, entry.get(key))
        schema = entry["config_schema"]
        assert schema["type"] == "object"
        for mode in entry["supported_modes"]:
            shown = settings_fields(schema, mode)
            assert shown[:3] == ["height", "width", "seed"], (pid, shown)
            for key in shown:
                prop = schema["properties"][key]
                hint = prop["ui"]
                assert isinstance(hint["order"], int) and isinstance(hint["is_load_param"], bool)
                if "component" in hint:
                    assert hint["component"] in COMPOSITE
                else:  # a primitive widget must be inferable, else the app skips the field
                    assert widget(prop) is not None, (pid, key, prop)
        seed = schema["properties"]["seed"]
        assert widget(seed) == "number"  # not a slider over 2⁶³
        assert entry["config_schema"]["properties"]["height"]["ui"]["component"] == "resolution"
        assert "denoising_steps" in entry["mode_defaults"][entry["default_mode"]] or \
            not entry["supports_prompts"]
    # Truthful metadata: what each pipeline actually does.
    assert pipelines["streamdiffusion"]["requires_models"] is True
    assert pipelines["passthrough"]["requires_models"] is False
    assert not any(p["supports_lora"] or p["supports_quantization"] for p in pipelines.values())
    effect = pipelines["cpu-effect"]["config_schema"]["properties"]
    assert effect["noise_scale"]["ui"] == {"category": "configuration", "order": 41,
                                           "label": "Noise scale", "is_load_param": False,
                                           "component": "noise"}
    assert effect["denoising_step_list"]["ui"]["is_load_param"] is False
    passthrough = pipelines["passthrough"]["config_schema"]["properties"]
    assert "ui" not in passthrough["noise_scale"]  # passthrough has no prompt controls
    sd = pipelines["streamdiffusion"]["config_schema"]["properties"]
    assert widget(sd["cfg_scale"]) == "slider" and widget(sd["dtype"]) == "enum"
    assert sd["similarity_filter"]["ui"]["modes"] == ["video"]
