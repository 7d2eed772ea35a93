"""`GET /metrics`: Prometheus' text format, behind the API key like /api/v1."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..auth import api_key_guard
from .context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["server"], dependencies=[Depends(api_key_guard(ctx.settings.api_key))],
                    responses={401: {"description": "API key missing or wrong (when one is set)"}})

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                              "description": "Prometheus text exposition format"}})
    async def metrics() -> Response:
        # On the event loop, like every change to the sessions it reads: a consistent view.
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return api
