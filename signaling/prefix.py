"""The URL prefix a reverse proxy serves the app under, told by the proxy's `X-Forwarded-Prefix`.

jupyter-server-proxy (`/user/<name>/proxy/8000/` → `/`), Traefik's StripPrefix and many nginx
setups strip the prefix before forwarding and say what it was in `X-Forwarded-Prefix`. Setting
it as the ASGI `root_path` makes everything that builds public URLs (Gradio's page config, the
OpenAPI docs) use the prefixed ones; routing is unchanged, since Starlette matches on the path
without `root_path` whether the proxy stripped it or not. An explicit root path (`--root-path`)
wins over the header. Only a plain path is taken (it ends up in the page), anything else is
ignored: a client that sends a bogus prefix only gets itself a page with broken links.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

HEADER = b"x-forwarded-prefix"
# Path segments of URL-safe characters (percent-escapes included: JupyterHub escapes user names).
_PREFIX = re.compile(r"(/[A-Za-z0-9._~%@!$&'()*+,;=:-]+)+/?")


def forwarded_prefix(value: str) -> str | None:
    """The prefix without its trailing slash, or None when `value` is not a plain path."""
    value = value.split(",")[0].strip()  # proxies chained: the first one is the outermost
    if not _PREFIX.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        return None
    return value.rstrip("/")


class ForwardedPrefixMiddleware:
    """Sets `root_path`: the configured one (`--root-path`), else the one the ASGI server was
    given (`uvicorn --root-path`), else the proxy's header."""

    def __init__(self, app: ASGIApp, root_path: str = "") -> None:
        self.app = app
        self.root_path = root_path.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            if self.root_path:
                scope = {**scope, "root_path": self.root_path}
            elif not scope.get("root_path"):
                for name, value in scope["headers"]:
                    if name == HEADER:
                        prefix = forwarded_prefix(value.decode("latin-1"))
                        if prefix:
                            scope = {**scope, "root_path": prefix}
                        break
        await self.app(scope, receive, send)


def route_path(scope: Scope) -> str:
    """The request's path within the app: without `root_path` when the proxy left it in."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] in ("", "/"):
        return path[len(root):] or "/"
    return path
