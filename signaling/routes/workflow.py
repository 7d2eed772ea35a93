"""`POST /workflow/resolve`: does this server have what a Scope workflow needs?"""

from __future__ import annotations

from fastapi import APIRouter

from ..workflow import ResolutionPlan, Workflow, resolve
from .context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/workflow", tags=["scope app"])

    @api.post("/resolve", response_model=ResolutionPlan, responses={422: {}})
    async def resolve_workflow(body: Workflow) -> ResolutionPlan:
        """One item per pipeline, plugin and LoRA the workflow needs, with its status here;
        warnings for graph nodes this server does not run. Missing LoRAs do not block."""
        return resolve(body, ctx.service.lora_folder)

    return api
