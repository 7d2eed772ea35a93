"""Scope features this server does not have, answered in Scope's shapes so that Scope's app
loads without errors: no server-side input sources, plugins, plugin nodes, cloud relay,
tempo sync, DMX, Scope's OSC graph inventory and its OSC event stream. Each answer says "nothing
here" (empty, disabled, disconnected). OSC control itself is in `osc.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from .context import ApiContext

KEEPALIVE_S = 15.0
POLL_S = 0.25  # how soon an open event stream notices that the server is stopping


class InputSourcesResponse(BaseModel):
    input_sources: list[dict[str, Any]] = []


class PluginsResponse(BaseModel):
    plugins: list[dict[str, Any]] = []
    total: int = 0
    failed_plugins: list[dict[str, Any]] = []


class NodeDefinitionsResponse(BaseModel):
    """Scope's plugin node palette (custom backend nodes). Pipelines are not nodes there (the
    app lists them from /pipelines/schemas), and LiveV2V has no plugin nodes."""

    nodes: list[dict[str, Any]] = []


class CloudStatusResponse(BaseModel):
    connected: bool = False
    connecting: bool = False
    error: str | None = None
    app_id: str | None = None
    connection_id: str | None = None
    credentials_configured: bool = False
    last_close_code: int | None = None
    last_close_reason: str | None = None


class TempoStatusResponse(BaseModel):
    enabled: bool = False
    beats_per_bar: int = 4
    beat_state: dict[str, Any] | None = None
    source: dict[str, Any] | None = None


class TempoSourcesResponse(BaseModel):
    sources: dict[str, Any] = {}


class DmxStatusResponse(BaseModel):
    enabled: bool = False
    listening: bool = False
    port: int | None = None
    preferred_port: int = 6454
    host: str | None = None
    log_all_messages: bool = False
    mapping_count: int = 0


class OscPath(BaseModel):
    model_config = ConfigDict(extra="ignore")

    osc_address: str = Field(max_length=500)
    type: str = Field(max_length=50)


class OscInventoryRequest(BaseModel):
    paths: list[OscPath] = Field(max_length=2000)


class OscInventoryResponse(BaseModel):
    count: int


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["not available here"])

    @api.get("/input-sources", response_model=InputSourcesResponse)
    async def input_sources() -> InputSourcesResponse:
        """No server-side sources (NDI, Spout, Syphon, files): the browser sends the video."""
        return InputSourcesResponse()

    @api.get("/plugins", response_model=PluginsResponse)
    async def plugins() -> PluginsResponse:
        return PluginsResponse()

    @api.get("/nodes/definitions", response_model=NodeDefinitionsResponse)
    async def node_definitions() -> NodeDefinitionsResponse:
        return NodeDefinitionsResponse()

    @api.get("/cloud/status", response_model=CloudStatusResponse)
    async def cloud_status() -> CloudStatusResponse:
        """Always local: LiveV2V has no cloud relay."""
        return CloudStatusResponse()

    @api.get("/tempo/status", response_model=TempoStatusResponse)
    async def tempo_status() -> TempoStatusResponse:
        return TempoStatusResponse()

    @api.get("/tempo/sources", response_model=TempoSourcesResponse)
    async def tempo_sources() -> TempoSourcesResponse:
        return TempoSourcesResponse()

    @api.get("/dmx/status", response_model=DmxStatusResponse)
    async def dmx_status() -> DmxStatusResponse:
        return DmxStatusResponse()

    @api.post("/osc/inventory", response_model=OscInventoryResponse, responses={422: {}})
    async def osc_inventory(body: OscInventoryRequest) -> OscInventoryResponse:
        """Accepted and dropped: LiveV2V has no graph nodes with OSC addresses of their own
        (its addresses: `GET /osc/paths`)."""
        return OscInventoryResponse(count=len(body.paths))

    @api.get("/osc/stream", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def osc_stream() -> StreamingResponse:
        """A Server-Sent Events stream that stays open and quiet (keepalive comments only).
        Scope's app re-sends what arrives here over its data channel; LiveV2V applies OSC
        messages itself and tells the app with `parameters_updated` on that channel instead,
        so nothing is sent here. It ends when the client leaves or the server stops."""
        return StreamingResponse(_quiet_events(ctx), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return api


async def _quiet_events(ctx: ApiContext) -> AsyncIterator[str]:
    yield ": OSC changes reach the sessions' data channels (parameters_updated), not here\n\n"
    last = time.monotonic()
    while not ctx.stopping.is_set():  # a client that leaves cancels this generator
        await asyncio.sleep(POLL_S)
        if time.monotonic() - last >= KEEPALIVE_S:
            last = time.monotonic()
            yield ": keepalive\n\n"
