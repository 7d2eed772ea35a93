"""Runtime parameters of live sessions over HTTP (Scope's `/session/parameters`).

A change made here is a change "from elsewhere" for the sessions it reaches: they get Scope's
`parameters_updated` (so Scope's app moves its controls) and our `parameters_applied`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel

from pipeline import ParameterRejectedError, ParameterUpdate

from ..session import Session
from .context import ApiContext

SESSION_ID = Query(default=None, max_length=64,
                   description="Only this session (beyond Scope); default: every live session.")


class SessionParametersResponse(BaseModel):
    parameters: dict[str, Any]


class ApplyParametersResponse(BaseModel):
    status: str = "ok"
    applied_parameters: dict[str, Any]
    sessions: int
    """Sessions the update reached."""
    skipped: dict[str, str] = {}
    """Sessions that refused it (session id → reason), e.g. an input_mode their pipeline lacks
    or lora_scales for a LoRA it has not loaded."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/session", tags=["session"])

    def targets(session_id: str | None) -> list[Session]:
        if session_id is None:
            return ctx.sessions.live()
        session = ctx.sessions.get(session_id)
        if session is None or session.closing:
            raise HTTPException(404, f"Session {session_id!r} not found or closed.")
        return [session]

    @api.get("/parameters", response_model=SessionParametersResponse, responses={404: {}})
    async def get_parameters(session_id: str | None = SESSION_ID) -> SessionParametersResponse:
        """The values in force for a session (default: the oldest live one; `{}` if none)."""
        sessions = targets(session_id)
        return SessionParametersResponse(parameters=sessions[0].parameters() if sessions else {})

    @api.post("/parameters", response_model=ApplyParametersResponse,
              responses={400: {}, 404: {}, 422: {}})
    async def apply_parameters(body: ParameterUpdate,
                               session_id: str | None = SESSION_ID) -> ApplyParametersResponse:
        """Apply a `parameters` update to live sessions, as if sent on their channels."""
        given = body.given()
        if not given:
            raise HTTPException(400, "No parameters provided.")
        reached, skipped = 0, {}
        for session in targets(session_id):
            try:
                session.apply_from_elsewhere(body)
                reached += 1
            except ParameterRejectedError as exc:
                if session_id is not None:
                    raise HTTPException(400, str(exc)) from None
                skipped[session.id] = str(exc)
        return ApplyParametersResponse(applied_parameters=given, sessions=reached, skipped=skipped)

    return api
