"""Reference images (Scope's assets): list, upload (raw body), fetch. One confined folder."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from pipeline.resources.assets import (
    AssetError,
    AssetInfo,
    AssetStore,
    AssetTooLargeError,
    AssetType,
)

from .context import ApiContext


class AssetsResponse(BaseModel):
    assets: list[AssetInfo]


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/assets", tags=["assets"])
    store = AssetStore(ctx.settings.assets_folder(), max_bytes=ctx.settings.asset_max_bytes)

    @api.get("", response_model=AssetsResponse)
    async def list_assets(type: AssetType | None = None) -> AssetsResponse:
        """Stored images, newest first (`video`/`audio`: none are stored here)."""
        return AssetsResponse(assets=await asyncio.to_thread(store.list, type))

    @api.post("", response_model=AssetInfo, responses={400: {}, 413: {}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string",
                                                          "format": "binary"}}}}})
    async def upload(request: Request,
                     filename: str = Query(min_length=1, max_length=255)) -> AssetInfo:
        """The raw image bytes as the body. The content is decoded to check it; the stored name
        is `filename` made safe, with the extension of the real format."""
        data = await request.body()
        if not data:
            raise HTTPException(400, "The body is empty; send the image bytes.")
        try:
            return await asyncio.to_thread(store.save, filename, data)
        except AssetTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except AssetError as exc:
            raise HTTPException(400, str(exc)) from None

    @api.get("/{path:path}", response_class=FileResponse,
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {},
                                          "image/bmp": {}}}, 404: {}})
    async def fetch(path: str) -> FileResponse:
        """A stored image by name, or by the `path` the list or upload returned."""
        found = await asyncio.to_thread(store.find, path)
        if found is None:
            raise HTTPException(404, "No such asset.")
        return FileResponse(found, media_type=store.media_type(found),
                            headers={"X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})

    return api
