"""What this machine has: GPUs (through torch.cuda), CPU cores, memory. `signaling` never imports
torch, so the probe lives here."""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    vram_gb: float


@dataclass(frozen=True)
class Hardware:
    gpus: list[Gpu] = field(default_factory=list)
    cpu_count: int = 1
    ram_gb: float | None = None
    platform: str = ""


@functools.lru_cache(maxsize=1)
def probe() -> Hardware:
    """Probed once per process (torch.cuda device queries are not free)."""
    return Hardware(gpus=_gpus(), cpu_count=os.cpu_count() or 1, ram_gb=_ram_gb(),
                    platform=f"{platform.system()} {platform.machine()}".strip())


def _gpus() -> list[Gpu]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        gpus.append(Gpu(index=index, name=props.name,
                        vram_gb=round(props.total_memory / GIB, 2)))
    return gpus


def _ram_gb() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX (Windows)
        return None
    return round(pages * page_size / GIB, 2)


@dataclass(frozen=True)
class GpuMemory:
    index: int
    allocated_bytes: int  # held by tensors
    reserved_bytes: int  # held by torch's caching allocator (what nvidia-smi shows, roughly)
    total_bytes: int


def gpu_memory() -> list[GpuMemory]:
    """Memory per CUDA device, once this process has used CUDA; empty otherwise (without
    importing torch or initialising CUDA just to ask: a scrape must stay cheap)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        found.append(GpuMemory(index=index,
                               allocated_bytes=int(torch.cuda.memory_allocated(index)),
                               reserved_bytes=int(torch.cuda.memory_reserved(index)),
                               total_bytes=int(torch.cuda.get_device_properties(index).total_memory)))
    return found
