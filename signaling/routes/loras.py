"""LoRA files (Scope's routes): list, install from a URL, download by source, delete, progress.

Installs answer when the file is in place (as Scope's do, its app awaits them); while one runs,
`GET /lora/downloads` shows its bytes and percentage.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from pipeline.resources.lora_install import (
    DownloadRequest,
    DownloadResult,
    InstallError,
    InstallProgress,
    LoraInstaller,
    installed,
)
from pipeline.resources.loras import LoraError, LoraFileInfo, LoraFolder

from .context import ApiContext


class LoraFilesResponse(BaseModel):
    lora_files: list[LoraFileInfo]


class LoraInstallRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(min_length=1, max_length=2000,
                     description="A Hugging Face …/resolve/… link, a CivitAI download link, or a "
                                 "direct link on an allowed host.")
    filename: str | None = Field(default=None, min_length=1, max_length=255)
    subfolder: str | None = Field(default=None, max_length=200)


class LoraInstallResponse(BaseModel):
    message: str
    file: LoraFileInfo


class LoraDeleteResponse(BaseModel):
    success: bool
    message: str


class LoraDownloadsResponse(BaseModel):
    downloads: list[InstallProgress]


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(tags=["loras"])
    folder = ctx.service.lora_folder or LoraFolder(ctx.settings.lora_folder())
    installer = LoraInstaller(folder, hosts=ctx.settings.lora_hosts,
                              max_bytes=ctx.settings.lora_max_bytes)
    errors = {400: {}, 403: {}, 404: {}, 409: {}, 413: {}, 429: {}, 502: {}, 507: {}}

    async def install(plan_call, *args) -> DownloadResult:
        try:
            plan = await asyncio.to_thread(plan_call, *args)
            return await asyncio.to_thread(installer.run, plan)
        except InstallError as exc:
            raise HTTPException(exc.status, str(exc)) from None

    @api.get("/loras", response_model=LoraFilesResponse)
    async def list_loras() -> LoraFilesResponse:
        """The LoRA files (.safetensors, .pt, .pth, .bin) in the LoRA folder and its sub-folders."""
        return LoraFilesResponse(lora_files=await asyncio.to_thread(folder.list))

    @api.post("/loras", response_model=LoraInstallResponse, responses=errors)
    async def install_lora(body: LoraInstallRequest) -> LoraInstallResponse:
        """Download a LoRA from a link into the LoRA folder; answers when it is installed."""
        result = await install(installer.plan_url, body.url, body.filename, body.subfolder)
        return LoraInstallResponse(message=f"Installed {result.filename}", file=installed(result))

    @api.post("/lora/download", response_model=DownloadResult, responses=errors)
    async def download_lora(body: DownloadRequest) -> DownloadResult:
        """Scope's download by source: `huggingface` (repo_id, hf_filename), `civitai`
        (version_id) or `url`."""
        return await install(installer.plan, body)

    @api.get("/lora/downloads", response_model=LoraDownloadsResponse)
    async def downloads() -> LoraDownloadsResponse:
        """Installs running now or finished in the last 10 minutes, with their progress."""
        return LoraDownloadsResponse(downloads=installer.progress())

    @api.delete("/loras/{name:path}", response_model=LoraDeleteResponse, responses={404: {}})
    async def delete_lora(name: str) -> LoraDeleteResponse:
        """Delete a file of the LoRA folder (by name, with or without extension)."""
        if len(name) > 500:
            raise HTTPException(404, "No such LoRA.")
        try:
            path = await asyncio.to_thread(folder.delete, name)
        except LoraError as exc:
            raise HTTPException(404, str(exc)) from None
        return LoraDeleteResponse(success=True, message=f"Deleted {path.name}")

    return api
