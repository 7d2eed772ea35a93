"""HTTP routes of the API contract (api.md): WebRTC signaling and pipeline management."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from pipeline import (
    ForbiddenPathError,
    LoadingError,
    LoadInProgressError,
    NotLoadedError,
    PipelineService,
    UnknownPipelineError,
    UnsupportedModeError,
)
from pipeline import registry as pipelines

from .auth import api_key_guard
from .ice import IceServerProvider, IceServersResponse
from .models import (
    CandidatesRequest,
    HealthResponse,
    MessageResponse,
    OfferRequest,
    OfferResponse,
    PipelineLoadRequest,
    PipelineSchemasResponse,
    PipelineStatusResponse,
)
from .sdp import SdpError
from .sessions import CapacityError, SessionRegistry

RETRY_AFTER_S = "2"


def build_router(sessions: SessionRegistry, service: PipelineService, ice: IceServerProvider,
                 version: str, api_key: str | None = None) -> APIRouter:
    router = APIRouter()
    started = time.time()

    @router.get("/health", response_model=HealthResponse, tags=["server"])
    async def health() -> HealthResponse:
        return HealthResponse(timestamp=datetime.now(UTC).isoformat(),
                              server_start_time=started, version=version)

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(api_key_guard(api_key))],
                    responses={401: {"description": "API key missing or wrong (when one is set)"}})

    @api.get("/webrtc/ice-servers", response_model=IceServersResponse, tags=["webrtc"],
             response_model_exclude_none=False)
    async def ice_servers() -> IceServersResponse:
        return IceServersResponse(iceServers=await ice.servers())

    @api.post("/webrtc/offer", response_model=OfferResponse, tags=["webrtc"],
              responses={400: {}, 503: {}})
    async def offer(body: OfferRequest) -> OfferResponse:
        try:
            session = await sessions.open(body.sdp, body.type, body.initialParameters)
        except (SdpError, NotLoadedError, UnsupportedModeError) as exc:
            raise HTTPException(400, str(exc)) from None
        except (LoadingError, CapacityError) as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except ValueError as exc:  # aiortc rejecting an offer it cannot answer
            raise HTTPException(400, f"Unsupported offer: {exc}") from None
        answer = session.pc.localDescription
        return OfferResponse(sdp=answer.sdp, sessionId=session.id)

    @api.patch("/webrtc/offer/{session_id}", status_code=204, tags=["webrtc"],
               responses={400: {}, 404: {}})
    async def add_candidates(session_id: str, body: CandidatesRequest) -> Response:
        session = sessions.get(session_id)
        if session is None or session.closed.is_set():
            raise HTTPException(404, f"Session {session_id!r} not found or closed.")
        try:
            await session.add_candidates(body.candidates)
        except SdpError as exc:
            raise HTTPException(400, str(exc)) from None
        return Response(status_code=204)

    @api.delete("/webrtc/offer/{session_id}", status_code=204, tags=["webrtc"])
    async def close_session(session_id: str) -> Response:
        session = sessions.get(session_id)
        if session is not None:
            await session.close(None)
        return Response(status_code=204)

    @api.post("/pipeline/load", response_model=MessageResponse, tags=["pipeline"],
              responses={400: {}, 403: {}, 409: {}, 422: {}})
    async def load(body: PipelineLoadRequest) -> MessageResponse:
        if body.pipelines:
            if len(body.pipelines) != 1:
                raise HTTPException(400, "Exactly one pipeline can be loaded at a time.")
            pipeline_id, params = body.pipelines[0].pipeline_id, body.pipelines[0].load_params
        elif body.pipeline_ids:
            if len(body.pipeline_ids) != 1:
                raise HTTPException(400, "Exactly one pipeline can be loaded at a time.")
            pipeline_id, params = body.pipeline_ids[0], body.load_params
        else:
            raise HTTPException(400, "Give pipeline_ids (with load_params) or pipelines.")
        try:
            service.load(pipeline_id, params)
        except UnknownPipelineError as exc:
            raise HTTPException(400, str(exc)) from None
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", "load_params", *e["loc"])}
                 for e in exc.errors(include_url=False, include_context=False)]
            ) from None
        except ForbiddenPathError as exc:
            raise HTTPException(403, str(exc)) from None
        except LoadInProgressError as exc:
            raise HTTPException(409, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        return MessageResponse(message="Pipeline loading initiated successfully")

    @api.post("/pipeline/unload", response_model=MessageResponse, tags=["pipeline"],
              responses={409: {}})
    async def unload() -> MessageResponse:
        """Free the pipeline's memory (beyond Scope); streaming sessions get stream_stopped."""
        try:
            await asyncio.to_thread(service.unload)  # waits for the batch in flight
        except LoadInProgressError as exc:
            raise HTTPException(409, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        return MessageResponse(message="Pipeline unloaded")

    @api.get("/pipeline/status", response_model=PipelineStatusResponse, tags=["pipeline"])
    async def status() -> PipelineStatusResponse:
        return PipelineStatusResponse(**service.status().model_dump())

    @api.get("/pipelines/schemas", response_model=PipelineSchemasResponse, tags=["pipeline"])
    async def schemas() -> PipelineSchemasResponse:
        return PipelineSchemasResponse.model_validate({"pipelines": pipelines.schemas()})

    router.include_router(api)
    return router
