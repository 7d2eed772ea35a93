"""Pydantic models of the HTTP API (request and response bodies), as in api.md."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import ParameterUpdate, PipelineStatus

MAX_SDP_BYTES = 64 * 1024
MAX_CANDIDATES = 64


class OfferRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(max_length=MAX_SDP_BYTES, description="The client's complete SDP offer.")
    type: str = Field(description='Must be "offer".')
    initialParameters: ParameterUpdate | None = Field(
        default=None, description="Any data-channel parameters, applied before the first frame.")
    watch: str | None = Field(default=None, max_length=128, description=(
        "Set from `initialParameters.watch`: the id of a session whose output this (recvonly) "
        "offer plays, as a WHEP viewer would; no pipeline stream of its own."))

    @model_validator(mode="before")
    @classmethod
    def _take_watch(cls, data: Any) -> Any:
        """`watch` travels inside `initialParameters` (where a Scope-style client puts what it
        wants of the session) but is no pipeline parameter: lift it out."""
        if isinstance(data, dict) and isinstance(data.get("initialParameters"), dict) \
                and "watch" in data["initialParameters"]:
            initial = dict(data["initialParameters"])
            data = {**data, "watch": initial.pop("watch"), "initialParameters": initial or None}
        return data


class OfferResponse(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"
    sessionId: str


class IceCandidateModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    candidate: str = Field(max_length=1024, description='"candidate:…" line; "" ends candidates.')
    sdpMid: str | None = Field(default=None, max_length=64)
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=64)


class CandidatesRequest(BaseModel):
    candidates: list[IceCandidateModel] = Field(max_length=MAX_CANDIDATES)


class PipelineNode(BaseModel):
    model_config = ConfigDict(extra="ignore")

    node_id: str | None = None
    pipeline_id: str
    load_params: dict[str, Any] | None = None


class PipelineLoadRequest(BaseModel):
    """`{pipeline_ids, load_params}` or `{pipelines: [{node_id, pipeline_id, load_params}]}`."""

    model_config = ConfigDict(extra="ignore")

    pipeline_ids: list[str] | None = Field(default=None, max_length=8)
    load_params: dict[str, Any] | None = None
    pipelines: list[PipelineNode] | None = Field(default=None, max_length=8)


class MessageResponse(BaseModel):
    message: str


class PipelineStatusResponse(PipelineStatus):
    produces_video: bool = True
    produces_audio: bool = False


class PipelineSchema(BaseModel):
    """Ours (`load_schema`, `supports_prompts`) plus the metadata keys Scope's app reads."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str
    description: str
    version: str
    supported_modes: list[str]
    default_mode: str
    supports_prompts: bool
    supports_vace: bool
    supports_lora: bool
    supports_cache_management: bool
    supports_kv_cache_bias: bool
    supports_quantization: bool
    estimated_vram_gb: float | None
    min_dimension: int
    requires_models: bool
    usage: list[str]
    docs_url: str | None
    inputs: list[str]
    outputs: list[str]
    config_schema: dict[str, Any]
    load_schema: dict[str, Any]
    mode_defaults: dict[str, dict[str, Any]]


class PipelineSchemasResponse(BaseModel):
    pipelines: dict[str, PipelineSchema]


class HealthResponse(BaseModel):
    status: Literal["healthy"] = "healthy"
    timestamp: str
    server_start_time: float
    version: str
