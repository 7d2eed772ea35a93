"""The `parameters` data channel: server → client messages and parsing of client messages."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from pipeline import ParameterUpdate

MAX_MESSAGE_BYTES = 64 * 1024


class StreamStopped(BaseModel):
    type: Literal["stream_stopped"] = "stream_stopped"
    error_message: str | None = None


class ParametersUpdated(BaseModel):
    """Scope's meaning: parameters changed from *elsewhere* (an HTTP route, another controller),
    never an echo of this client's own update. Only Scope's keys, only those that changed:
    Scope's app copies them into its controls and keeps unknown keys as overrides."""

    type: Literal["parameters_updated"] = "parameters_updated"
    parameters: dict[str, Any]


class ParametersApplied(BaseModel):
    """Ours (Scope's app ignores it): after every accepted change, whoever made it (this client's
    update, its initialParameters, or a change from elsewhere), the values now in force,
    defaults included."""

    type: Literal["parameters_applied"] = "parameters_applied"
    parameters: dict[str, Any]


class ErrorNotification(BaseModel):
    type: Literal["error"] = "error"
    error_message: str


class Stats(BaseModel):
    type: Literal["stats"] = "stats"
    fps_in: float
    fps_out: float
    frames_in: int
    frames_out: int
    frames_dropped: int
    frames_dropped_output: int
    pipeline_latency_ms: float | None
    process_ms: float | None
    chunk_frames: int = 1
    """Frames one pipeline call produces (video models work in chunks)."""
    chunk_wait_ms: float | None = None
    """How long a chunk's first frame waited for the rest (part of pipeline_latency_ms)."""
    input_mode: str | None
    event_loop_lag_ms: float | None = None
    """The server's event loop: the most it ran late over the last second (every session's
    network I/O waits that long)."""


ServerMessage = StreamStopped | ParametersUpdated | ParametersApplied | ErrorNotification | Stats

# The runtime keys Scope's app shows as controls. Others (input_mode, transition,
# prompt_interpolation_method, seed, ...) it would store and send back in its next load.
SCOPE_PARAMETER_KEYS = ("prompts", "denoising_step_list", "noise_scale", "paused", "manage_cache",
                        "kv_cache_attention_bias", "vace_context_scale", "lora_scales")


def scope_view(update: ParameterUpdate) -> dict[str, Any]:
    """What `parameters_updated` carries for an update made elsewhere: its Scope keys; a
    transition shows as the prompts it leads to."""
    given = update.given()
    view = {key: given[key] for key in SCOPE_PARAMETER_KEYS if key in given}
    if "transition" in given and "prompts" not in view:
        view["prompts"] = given["transition"]["target_prompts"]
    return view


class MessageError(ValueError):
    """A client message that was rejected; the text goes back in an `error` notification."""


def _reject_constant(name: str) -> float:
    raise MessageError(f"{name} is not a valid number")


def parse_update(raw: str | bytes) -> ParameterUpdate:
    """Validate one client message. Raises MessageError with a readable reason."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(
            f"message too large ({len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES})")
    try:
        # Python's json accepts NaN/Infinity, which JSON does not: refuse them here.
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError(f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("message must be a JSON object")
    try:
        update = ParameterUpdate.model_validate(data)
    except ValidationError as exc:
        raise MessageError(_describe(exc)) from None
    return update


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "message"
        parts.append(f"{where}: {err['msg']}")
    return "invalid parameters: " + "; ".join(parts)
