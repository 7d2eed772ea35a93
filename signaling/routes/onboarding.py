"""Scope's first-run state: `GET/PUT /onboarding/status`, persisted per user."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException

from ..onboarding import OnboardingStatus, OnboardingUpdate
from .context import ApiContext


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/onboarding", tags=["scope app"])

    @api.get("/status", response_model=OnboardingStatus)
    async def get_status() -> OnboardingStatus:
        return await asyncio.to_thread(ctx.onboarding.read)

    @api.put("/status", response_model=OnboardingStatus, responses={422: {}, 503: {}})
    async def put_status(body: OnboardingUpdate) -> OnboardingStatus:
        """Change the keys sent (Scope's app sends one or two at a time); the file survives
        restarts, so the first-run overlay does not come back."""
        try:
            return await asyncio.to_thread(ctx.onboarding.update, body)
        except OSError as exc:
            raise HTTPException(503, f"Could not save the onboarding status: {exc}") from None

    return api
