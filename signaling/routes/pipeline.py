"""Pipeline management: load, unload, status, schemas."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from pipeline import ForbiddenPathError, LoadInProgressError, LoraError, UnknownPipelineError
from pipeline import registry as pipelines

from ..models import (
    MessageResponse,
    PipelineLoadRequest,
    PipelineSchemasResponse,
    PipelineStatusResponse,
)
from .context import RETRY_AFTER_S, ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["pipeline"])
    service = ctx.service

    @api.post("/pipeline/load", response_model=MessageResponse,
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
        except LoraError as exc:
            raise HTTPException(400, str(exc)) from None
        except LoadInProgressError as exc:
            raise HTTPException(409, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        return MessageResponse(message="Pipeline loading initiated successfully")

    @api.post("/pipeline/unload", response_model=MessageResponse, responses={409: {}})
    async def unload() -> MessageResponse:
        """Free the pipeline's memory (beyond Scope); streaming sessions get stream_stopped."""
        try:
            await asyncio.to_thread(service.unload)  # waits for the batch in flight
        except LoadInProgressError as exc:
            raise HTTPException(409, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        return MessageResponse(message="Pipeline unloaded")

    @api.get("/pipeline/status", response_model=PipelineStatusResponse)
    async def status() -> PipelineStatusResponse:
        return PipelineStatusResponse(**service.status().model_dump())

    @api.get("/pipelines/schemas", response_model=PipelineSchemasResponse)
    async def schemas() -> PipelineSchemasResponse:
        return PipelineSchemasResponse.model_validate({"pipelines": pipelines.schemas()})

    return api
