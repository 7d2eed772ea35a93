"""Model weights: whether a pipeline's hub files are cached here, and downloading them."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline import UnknownPipelineError
from pipeline import registry as pipelines
from pipeline.resources.hub import (
    DownloadInProgressError,
    HubModel,
    HubOfflineError,
    ModelDownloads,
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

    def hub_models(pipeline_id: str) -> list[HubModel]:
        """What the pipeline loads: with the load params in force when it is the loaded (or
        loading) one, else with its defaults. Raises UnknownPipelineError."""
        cls = pipelines.get(pipeline_id)
        current = ctx.service.status()
        if current.pipeline_id == pipeline_id and current.load_params:
            with contextlib.suppress(ValidationError):
                return cls.hub_models(cls.Params.model_validate(current.load_params))
        return cls.hub_models()

    downloads = ModelDownloads(hub_models)

    @api.get("/status", response_model=ModelStatus, responses={404: {}})
    async def status(pipeline_id: str = Query(min_length=1, max_length=200,
                                              pattern=r"^[A-Za-z0-9._-]+$")) -> ModelStatus:
        """`downloaded`: every hub file the pipeline loads (with the load params in force when
        it is loaded, else its defaults) is in the local Hugging Face cache. `progress` while
        a download runs (or after one failed)."""
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
