"""Model weights: whether a pipeline's hub files are cached here, and downloading them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from pipeline import UnknownPipelineError
from pipeline.resources.hub import (
    DownloadInProgressError,
    HubOfflineError,
    ModelStatus,
)

from ..models import MessageResponse
from .context import RETRY_AFTER_S, ApiContext

PipelineId = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")


class ModelDownloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pipeline_id: str = PipelineId


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/models", tags=["models"])

    # The service's own: a load's download shows here, and a download started here is the
    # one a load then waits for.
    downloads = ctx.service.downloads

    @api.get("/status", response_model=ModelStatus, responses={404: {}})
    async def status(pipeline_id: str = Query(min_length=1, max_length=200,
                                              pattern=r"^[A-Za-z0-9._-]+$")) -> ModelStatus:
        """`downloaded`: every hub file the pipeline loads (with the load params in force when
        it is loaded, else its defaults; the dtype's variant per component where the repo has
        it) is in the local Hugging Face cache. `progress` while a download runs (or after one
        failed): bytes, rate, time left, and the planned files with their sizes."""
        try:
            return await asyncio.to_thread(downloads.status, pipeline_id)
        except UnknownPipelineError as exc:
            raise HTTPException(404, str(exc)) from None

    @api.post("/download", response_model=MessageResponse, responses={404: {}, 409: {}, 503: {}})
    async def download(body: ModelDownloadRequest) -> MessageResponse:
        """Start downloading the pipeline's hub files in the background; poll `/status`."""
        pipeline_id = body.pipeline_id
        try:
            started = downloads.start(pipeline_id)
        except UnknownPipelineError as exc:
            raise HTTPException(404, str(exc)) from None
        except DownloadInProgressError as exc:
            raise HTTPException(409, str(exc), headers={"Retry-After": RETRY_AFTER_S}) from None
        except HubOfflineError as exc:
            raise HTTPException(503, str(exc)) from None
        if not started:
            return MessageResponse(message=f"{pipeline_id} needs no model download")
        return MessageResponse(message=f"Model download started for {pipeline_id}")

    return api
