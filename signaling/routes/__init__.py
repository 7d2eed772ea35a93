"""HTTP routes, one module per resource. Each module has `router(ctx) -> APIRouter`.

To add a resource: write `signaling/routes/NAME.py` with `def router(ctx: ApiContext) ->
APIRouter` (paths relative to /api/v1) and add the module to `API_MODULES` below.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..auth import api_key_guard
from . import (
    assets,
    hardware,
    health,
    logs,
    loras,
    metrics,
    models,
    not_here,
    onboarding,
    osc,
    pipeline,
    recordings,
    session,
    webrtc,
    whep,
    whip,
    workflow,
)
from .context import ApiContext

__all__ = ["API_MODULES", "ApiContext", "build_router"]

# Modules mounted under /api/v1, behind the API key. Order only matters for the OpenAPI listing.
API_MODULES = [  # one per line: several people add modules here
    webrtc,
    pipeline,
    session,
    models,
    loras,
    recordings,
    assets,
    onboarding,
    workflow,
    hardware,
    logs,
    osc,
    whip,
    whep,
    not_here,
]


def build_router(ctx: ApiContext) -> APIRouter:
    """`/health` (open) plus every resource of `API_MODULES` under `/api/v1` (API key)."""
    root = APIRouter()
    root.include_router(health.router(ctx))
    root.include_router(metrics.router(ctx))  # /metrics: outside /api/v1, same API key rule
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(api_key_guard(ctx.settings.api_key))],
                    responses={401: {"description": "API key missing or wrong (when one is set)"}})
    for module in API_MODULES:
        api.include_router(module.router(ctx))
    root.include_router(api)
    return root
