"""`GET /hardware/info`: the GPU(s), CPU and memory this server runs on."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel

from pipeline.resources import hardware

from .context import ApiContext


class GpuInfo(BaseModel):
    index: int
    name: str
    vram_gb: float


class HardwareInfoResponse(BaseModel):
    """Scope's keys (`vram_gb` picks its quantization default; `*_available` its output
    options) plus what else is useful to know."""

    vram_gb: float | None
    gpu_name: str | None
    gpus: list[GpuInfo]
    cuda_available: bool
    cpu_count: int
    ram_gb: float | None
    platform: str
    spout_available: bool = False
    ndi_available: bool = False
    syphon_available: bool = False


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/hardware", tags=["server"])

    @api.get("/info", response_model=HardwareInfoResponse)
    async def info() -> HardwareInfoResponse:
        found = await asyncio.to_thread(hardware.probe)  # the first call asks the driver
        first = found.gpus[0] if found.gpus else None
        return HardwareInfoResponse(
            vram_gb=first.vram_gb if first else None, gpu_name=first.name if first else None,
            gpus=[GpuInfo(index=g.index, name=g.name, vram_gb=g.vram_gb) for g in found.gpus],
            cuda_available=bool(found.gpus), cpu_count=found.cpu_count, ram_gb=found.ram_gb,
            platform=found.platform)

    return api
