"""A request-body size limit (FastAPI has none): larger bodies get 413 before they are read."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .prefix import route_path


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, prefix: str = "/api/",
                 larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.larger = larger or {}
        """Exact paths with a limit of their own (uploads)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" else ""
        if not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(path.rstrip("/"), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send, limit)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        body = json.dumps({"detail": f"Request body too large (limit {limit} bytes)."})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body.encode()})


class _TooLarge(Exception):
    pass
