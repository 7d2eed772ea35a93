"""The optional API key: when set, every /api/v1 route requires it."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request

UNAUTHORIZED = ("Missing or wrong API key. Send it as 'Authorization: Bearer <key>' "
                "(or an 'X-API-Key' header).")


def api_key_guard(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency that checks the request's key in constant time; a no-op without a key."""

    async def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    return require_key
