"""The OSC address space: Scope's `/scope/<key>` addresses, what each one takes, and how a
message's arguments become a `ParameterUpdate`.

Keys, types and ranges come from the runtime parameter model (`ParameterUpdate`'s JSON schema)
and from the pipelines' `config_schema` (their runtime properties), so a new runtime parameter
gets its address without an edit here. Four keys are Scope's own, not parameters:

- `prompt` (a string): one prompt at weight 1; when `transition_steps` > 0 it starts a
  transition of that many steps to it instead (Scope's app does the same with its slider).
- `transition_steps`, `temporal_interpolation_method`: remembered per session (and for all),
  used by the next `prompt`.
- `interpolation_method`: Scope's name for `prompt_interpolation_method`.

The loaded LoRAs add `lora/<n>/scale` (the n-th LoRA in load order, from 0: the shape of Scope's
OSC LoRA branch) and `lora/<name>/scale` (the file's name as `GET /api/v1/loras` shows it; a
file name or the loaded path also matches): a float that becomes `lora_scales` for that LoRA.

Values arrive as OSC types (TouchDesigner's OSC Out CHOP sends every channel as float32), so a
bool accepts 0/1 numbers and an integer accepts a float with no fraction; the converted value
is then validated by the same pydantic models as a data-channel message.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline import ParameterUpdate, Pipeline
from pipeline import registry as pipelines
from pipeline.params import InterpolationMethod, TransitionSpec
from pipeline.resources.loras import (
    MAX_SCALE,
    LoraError,
    LoraParams,
    same_lora,
    scale_overrides,
)

OscType = Literal["string", "float", "integer", "bool", "integer_list"]

SCOPE_PREFIX = "/scope/"
SESSION_PREFIX = "/livev2v/"
LORA_GROUP = "LoRAs"
_OSC_RESERVED = set(" #*,/?[]{}")  # characters an OSC address part cannot hold


class OscAddress(BaseModel):
    """One address, as `GET /api/v1/osc/paths` lists it (Scope's entry plus default/example)."""

    key: str
    osc_address: str
    type: OscType
    description: str = ""
    min: int | float | None = None
    max: int | float | None = None
    enum: list[str] | None = None
    default: Any = None
    """The value in force when nobody set it (the loaded pipeline's default, if it has one)."""
    example: Any = None
    pipeline_id: str | None = None
    lora_path: str | None = None
    """For a LoRA's scale: the loaded LoRA it sets (as the status' `loaded_lora_adapters`)."""


# Scope's runtime addresses (its OSC reference lists these first), then LiveV2V's own.
# key → (runtime parameter it sets, description); None: not a parameter (see the docstring).
SCOPE_KEYS: dict[str, tuple[str | None, str]] = {
    "prompt": (None, "Set the prompt (one prompt, weight 1.0); with transition_steps > 0 it "
                     "transitions to it over that many frames"),
    "input_mode": ("input_mode", "Switch input mode: video (restyle the input) or text "
                                 "(generate from the prompt)"),
    "transition_steps": (None, "Frames over which the next prompt blends in (0 = at once)"),
    "interpolation_method": ("prompt_interpolation_method",
                             "How several prompts are blended (spatial interpolation)"),
    "temporal_interpolation_method": (None, "How a prompt transition blends over time"),
    "denoising_step_list": ("denoising_step_list", "Denoising timesteps, descending (the "
                                                   "first one sets the strength), e.g. 700 500"),
    "noise_scale": ("noise_scale", "Noise scale (how much new noise each frame gets)"),
    "noise_controller": ("noise_controller", "Adjust noise scale automatically from motion"),
    "kv_cache_attention_bias": ("kv_cache_attention_bias", "KV-cache attention bias: lower "
                                                           "relies less on past frames"),
    "manage_cache": ("manage_cache", "Reset caches automatically when parameters change"),
    "reset_cache": ("reset_cache", "Reset the pipeline's caches once (send 1 or true)"),
    "vace_context_scale": ("vace_context_scale", "VACE reference-image strength"),
    "paused": ("paused", "Pause (1) or resume (0) generation"),
}
LIVEV2V_KEYS: dict[str, tuple[str | None, str]] = {
    "prompt_interpolation_method": ("prompt_interpolation_method",
                                    "Same as interpolation_method (the parameter's own name)"),
    "seed": ("seed", "Noise seed"),
    "recording": ("recording", "Start (1) or stop (0) server-side recording of the output"),
}
# The worker's fallbacks when neither the session nor the pipeline set a value (params.py).
FALLBACK_DEFAULTS = {"denoising_step_list": [700, 500], "noise_scale": 0.7, "seed": 42,
                     "paused": False, "prompt_interpolation_method": "linear",
                     "recording": False}


class OscValueError(ValueError):
    """A message whose arguments do not fit its address; the text says why."""


class PromptSettings(BaseModel):
    """Scope's app state that `/scope/prompt` uses, kept by the server for clients without the
    app; validated with the constraints of the transition it feeds."""

    model_config = ConfigDict(strict=True, frozen=True)

    transition_steps: Annotated[int, *TransitionSpec.model_fields["num_steps"].metadata] = 0
    temporal_interpolation_method: InterpolationMethod = "linear"


# --- the catalogue ----------------------------------------------------------------------------


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A JSON-schema property without its `| None` branch."""
    for branch in prop.get("anyOf", ()):
        if branch.get("type") != "null":
            return {**branch, "description": prop.get("description", "")}
    return prop


def _entry(key: str, prop: dict[str, Any], description: str,
           pipeline_id: str | None = None) -> OscAddress | None:
    """The address of one runtime property, or None for a shape OSC cannot carry."""
    prop = _non_null(prop)
    kind = prop.get("type")
    enum = prop.get("enum")
    low, high = prop.get("minimum"), prop.get("maximum")
    osc_type: OscType
    if kind == "number":
        osc_type = "float"
    elif kind == "integer":
        osc_type = "integer"
    elif kind == "boolean":
        osc_type = "bool"
    elif kind == "string" and enum is not None:
        osc_type = "string"
    elif kind == "array" and prop.get("items", {}).get("type") == "integer":
        osc_type, low, high = "integer_list", 1, 1000  # the step validator's bounds
    else:
        return None
    return OscAddress(key=key, osc_address=f"{SCOPE_PREFIX}{key}", type=osc_type,
                      description=description or prop.get("description", ""),
                      min=low, max=high, enum=enum, pipeline_id=pipeline_id)


@functools.cache
def _runtime_properties() -> dict[str, dict[str, Any]]:
    return ParameterUpdate.model_json_schema()["properties"]


def _scope_entry(key: str, field: str | None, description: str,
                 modes: Sequence[str] | None) -> OscAddress:
    if key == "prompt":
        return OscAddress(key=key, osc_address=f"{SCOPE_PREFIX}{key}", type="string",
                          description=description)
    if field is None:  # a setting that the next prompt uses
        prop = PromptSettings.model_json_schema()["properties"][key]
    else:
        prop = _runtime_properties()[field]
    entry = _entry(key, prop, description)
    assert entry is not None, key
    if key == "input_mode" and modes:
        entry.enum = list(modes)
    return entry


def pipeline_runtime_keys(cls: type[Pipeline]) -> list[str]:
    """The runtime parameters a pipeline's `config_schema` shows as live controls."""
    properties = pipelines.schema(cls)["config_schema"]["properties"]
    return [key for key, prop in properties.items()
            if prop.get("ui", {}).get("is_load_param") is False and key in _runtime_properties()]


@dataclass(frozen=True)
class Catalogue:
    """Every address for one loaded pipeline (or none), grouped as Scope's reference is."""

    active: dict[str, list[OscAddress]]
    available: dict[str, list[OscAddress]]
    active_pipeline_ids: list[str]
    loras: LoraParams | None = None
    """The loaded pipeline's load parameters when it has LoRAs (what `lora/…/scale` sets)."""

    @functools.cached_property
    def by_key(self) -> dict[str, OscAddress]:
        keys: dict[str, OscAddress] = {}
        for groups in (self.available, self.active):  # the loaded pipeline's entry wins
            for entries in groups.values():
                for entry in entries:
                    keys[entry.key] = entry
        return keys

    def find(self, key: str) -> OscAddress | None:
        """The address of `key`; `lora/<ref>/scale` also finds a loaded LoRA by its path, a
        path relative to the LoRA folder, or any name `same_lora` accepts (in that order:
        `sub/style.safetensors` picks that one of two `style` files)."""
        entry = self.by_key.get(key)
        ref = lora_ref(key)
        if entry is not None or ref is None or self.loras is None:
            return entry
        paths = [spec.path for spec in self.loras.lora_specs()]
        tail = PurePath(ref).parts

        def inside(path: str) -> bool:  # `sub/style.safetensors` or `sub/style`
            full = PurePath(path)
            return tail in (full.parts[-len(tail):], full.with_suffix("").parts[-len(tail):])

        for matches in (lambda p: p == ref, inside, lambda p: same_lora(p, ref)):
            index = next((i for i, path in enumerate(paths) if matches(path)), None)
            if index is not None:
                return self.by_key.get(f"lora/{index}/scale")
        return None

    def lora_names(self) -> str:
        """The loaded LoRAs, for messages."""
        specs = self.loras.lora_specs() if self.loras is not None else []
        return ", ".join(f"{i}: {_lora_name(s.path)}" for i, s in enumerate(specs)) or "none"


def lora_ref(key: str) -> str | None:
    """`<ref>` of a `lora/<ref>/scale` key, else None."""
    if key.startswith("lora/") and key.endswith("/scale") and len(key) > len("lora//scale"):
        return key[len("lora/"):-len("/scale")]
    return None


def _lora_name(path: str) -> str:
    """A LoRA's name as `GET /api/v1/loras` shows it (the file name without its extension)."""
    return PurePath(path).stem


def lora_entries(params: LoraParams) -> list[OscAddress]:
    """Two addresses per loaded LoRA: by position (`lora/0/scale`) and by name, when the name
    can be an OSC address part and is no position (a name two LoRAs share is left out)."""
    specs = params.lora_specs()
    names = [_lora_name(spec.path) for spec in specs]
    entries = []
    for index, (spec, name) in enumerate(zip(specs, names, strict=True)):
        if spec.runtime:
            what, example = "live (runtime_peft); 0 turns it off", 0.5
        else:
            what, example = (f"fused (permanent): fixed at {spec.scale:g}; load it with "
                             "lora_merge_mode runtime_peft to change it live", spec.scale)
        refs = [str(index)]
        if (name and not name.isdigit() and names.count(name) == 1
                and not _OSC_RESERVED & set(name) and name.isprintable()):
            refs.append(name)
        for ref in refs:
            entries.append(OscAddress(
                key=f"lora/{ref}/scale", osc_address=f"{SCOPE_PREFIX}lora/{ref}/scale",
                type="float", min=-MAX_SCALE, max=MAX_SCALE, default=spec.scale,
                example=example, lora_path=spec.path,
                description=f"Scale of LoRA {index} ({name}): {what}"))
    return entries


def build_catalogue(cls: type[Pipeline] | None, params: Any = None) -> Catalogue:
    """The address space with `cls` loaded with `params`: Scope's runtime keys, LiveV2V's,
    each pipeline's runtime parameters (the loaded one's under `active`, the rest
    `available`) and a scale per loaded LoRA."""
    modes = list(cls.modes) if cls is not None else None

    def finish(entry: OscAddress, field: str | None,
               owner: type[Pipeline] | None = cls) -> OscAddress:
        defaults = _defaults(owner)
        if entry.key == "prompt":
            prompts = defaults.get("prompts")
            entry.default = prompts[0]["text"] if prompts else None
        elif field is None:
            entry.default = getattr(PromptSettings(), entry.key)
        else:
            entry.default = defaults.get(field, FALLBACK_DEFAULTS.get(field))
        entry.example = example_value(entry)
        return entry

    runtime = [finish(_scope_entry(key, field, text, modes), field)
               for key, (field, text) in SCOPE_KEYS.items()]
    ours = [finish(_scope_entry(key, field, text, modes), field)
            for key, (field, text) in LIVEV2V_KEYS.items()]
    active: dict[str, list[OscAddress]] = {"Runtime": runtime, "LiveV2V": ours}
    loras = params if isinstance(params, LoraParams) and params.loras else None
    if loras is not None:
        active[LORA_GROUP] = lora_entries(loras)
    available: dict[str, list[OscAddress]] = {}
    for pipeline_id in pipelines.available():
        other = pipelines.get(pipeline_id)
        entries = []
        for key in pipeline_runtime_keys(other):
            entry = _entry(key, _runtime_properties()[key], _describe(key), pipeline_id)
            if entry is not None:
                entries.append(finish(entry, key, other))
        if entries:
            (active if other is cls else available)[pipeline_id] = entries
    return Catalogue(active, available, [cls.id] if cls is not None else [], loras)


def _defaults(cls: type[Pipeline] | None) -> dict[str, Any]:
    """A pipeline's defaults in its default mode (the mode a session without input_mode
    starts in when it sends video)."""
    if cls is None:
        return {}
    mode = cls.default_mode()
    return {**cls.mode_defaults()[mode].given(), "input_mode": mode}


def _describe(key: str) -> str:
    for table in (SCOPE_KEYS, LIVEV2V_KEYS):
        if key in table:
            return table[key][1]
    return ""


def example_value(entry: OscAddress) -> Any:
    """A value that is valid for the address, for the reference's examples."""
    if entry.enum:
        return entry.enum[-1] if entry.default == entry.enum[0] else entry.enum[0]
    if entry.type == "string":
        return "a red sunset over the ocean"
    if entry.type == "bool":
        return True
    if entry.type == "integer_list":
        return [700, 500]
    if entry.type == "integer":
        return 8 if entry.key == "transition_steps" else 7
    low = entry.min if entry.min is not None else 0.0
    high = entry.max if entry.max is not None else 1.0
    return round((low + high) / 2, 2)


# --- values -----------------------------------------------------------------------------------


def convert(entry: OscAddress, args: Sequence[Any]) -> Any:
    """An OSC message's arguments as the Python value of `entry`'s type. Raises OscValueError."""
    if entry.type == "integer_list":
        items: list[Any] = list(args)
        if len(items) == 1 and isinstance(items[0], list):  # an OSC array: [700 500]
            items = items[0]
        elif len(items) == 1 and isinstance(items[0], str):  # "700 500" from a text field
            items = items[0].replace(",", " ").split()
            try:
                items = [int(item) for item in items]
            except ValueError:
                raise OscValueError(f"expected integers, got {args[0]!r}") from None
        if not items:
            raise OscValueError("expected one or more integers")
        return [_integer(item) for item in items]
    if not args:
        if entry.key == "reset_cache":  # a bare trigger
            return True
        raise OscValueError(f"expected one {entry.type} argument, got none")
    if len(args) > 1:
        raise OscValueError(f"expected one {entry.type} argument, got {len(args)}")
    value = args[0]
    if entry.type == "string":
        if not isinstance(value, str):
            raise OscValueError(f"expected a string, got {_osc_kind(value)}")
        if entry.enum is not None and value not in entry.enum:  # input_mode: the pipeline's
            raise OscValueError(f"{value[:40]!r} is not one of {', '.join(entry.enum)}")
        return value
    if entry.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and math.isfinite(value):
            return value != 0  # a TouchDesigner toggle channel sends 0.0 / 1.0
        raise OscValueError(f"expected true/false or a number, got {_osc_kind(value)}")
    if entry.type == "integer":
        return _integer(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OscValueError(f"expected a number, got {_osc_kind(value)}")
    if not math.isfinite(value):
        raise OscValueError(f"{value} is not a finite number")
    # OSC floats are float32: 0.42 arrives as 0.41999998688697815. Seven significant digits
    # give back the number that was sent (and what the controls then show).
    return float(f"{value:.7g}")


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OscValueError(f"expected an integer, got {_osc_kind(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise OscValueError(f"expected an integer, got {value}")
        return int(value)
    return value


def _osc_kind(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, bytes):
        return f"a blob of {len(value)} bytes"
    return f"{type(value).__name__} {value!r}"[:60]


def to_update(key: str, value: Any, settings: PromptSettings) -> ParameterUpdate:
    """The update that `key` = `value` makes, validated by the data channel's model. Raises
    OscValueError (with pydantic's reason) for a value outside its range."""
    field = dict(SCOPE_KEYS | LIVEV2V_KEYS).get(key, (key, ""))[0]
    if key == "prompt":
        prompts = [{"text": value, "weight": 1.0}]
        if settings.transition_steps > 0:
            data: dict[str, Any] = {"transition": {
                "target_prompts": prompts, "num_steps": settings.transition_steps,
                "temporal_interpolation_method": settings.temporal_interpolation_method}}
        else:
            data = {"prompts": prompts}
    else:
        assert field is not None, key
        data = {field: value}
    try:
        return ParameterUpdate.model_validate(data)
    except ValidationError as exc:
        raise OscValueError(_reason(exc)) from None


def to_settings(key: str, value: Any, settings: PromptSettings) -> PromptSettings:
    """`settings` with `transition_steps` or `temporal_interpolation_method` changed."""
    try:
        return PromptSettings.model_validate({**settings.model_dump(), key: value})
    except ValidationError as exc:
        raise OscValueError(_reason(exc)) from None


def lora_update(entry: OscAddress, value: float, catalogue: Catalogue) -> ParameterUpdate:
    """`lora_scales` for the LoRA of `entry`, checked as a data-channel message is: in range,
    and a new scale only for a live (runtime_peft) LoRA. Raises OscValueError."""
    assert entry.lora_path is not None, entry.key
    scales = [{"path": entry.lora_path, "scale": value}]
    try:
        scale_overrides(catalogue.loras, scales)
    except LoraError as exc:
        raise OscValueError(str(exc)) from None
    return ParameterUpdate(lora_scales=scales)


def is_setting(key: str) -> bool:
    return key in PromptSettings.model_fields


def _reason(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{err['msg']} (got {err.get('input')!r})"[:200]
