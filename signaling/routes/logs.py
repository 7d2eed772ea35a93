"""The server's recent log lines (Scope's Logs panel polls `/logs/tail` every 2 s)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from ..logbuffer import MAX_LINES
from .context import ApiContext


class LogTailResponse(BaseModel):
    lines: list[str]
    offset: int
    """Pass it back as `since_offset` to get only newer lines."""


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/logs", tags=["server"])

    @api.get("/tail", response_model=LogTailResponse, responses={422: {}})
    async def tail(lines: int = Query(default=200, ge=1, le=MAX_LINES),
                   since_offset: int = Query(default=0, ge=0, le=2**62)) -> LogTailResponse:
        """Up to `lines` of the newest lines logged at or after `since_offset`. Secrets (the
        API key, tokens) are replaced with *** before a line is kept."""
        found, offset = ctx.logs.tail(lines, since_offset)
        return LogTailResponse(lines=found, offset=offset)

    @api.get("/current", response_class=PlainTextResponse)
    async def current() -> str:
        """Every line kept (the last few thousand), as text."""
        return ctx.logs.text()

    return api
