"""Serves the browser client at a stable URL, `/ui/livev2v.js` (and the studio's other files
under `/ui/`), for pages other than the Gradio one. Include it before the Gradio mount:
`app.include_router(ui.routes.router)`."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from .blocks import STATIC_DIR

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

router = APIRouter(tags=["ui"])


@router.get("/ui/{name}", include_in_schema=False)
async def static_file(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in _TYPES or not path.is_file():
        raise HTTPException(404, "Not found")
    return FileResponse(path, media_type=_TYPES[path.suffix],
                        headers={"Cache-Control": "no-cache"})
