"""`GET /health` (outside /api/v1, never behind the API key)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from ..models import HealthResponse
from .context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["server"])

    @api.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(timestamp=datetime.now(UTC).isoformat(),
                              server_start_time=ctx.started, version=ctx.version)

    return api
