"""Server settings shared by the routes and the app wiring."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .recording import RecordingLimits

# Any page served from this machine (a dev server on another port, a notebook) may call the API.
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?"
LORA_HOSTS = ("huggingface.co", "hf.co", "civitai.com")


class ServerSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    pipeline: str | None = "passthrough"
    cors_origins: list[str] = Field(default_factory=list)
    max_sessions: int | None = Field(default=None, ge=1)
    connect_timeout_s: float = Field(default=30.0, gt=0)
    ice_idle_timeout_s: float = Field(default=10.0, gt=0)
    """A session whose client sent no ICE candidate is closed after this long."""
    max_pending: int | None = Field(default=None, ge=1)
    """Sessions answered but not connected yet (default: 2 × max sessions, at least 16)."""
    max_pending_per_client: int | None = Field(default=4, ge=1)
    """Pending sessions per client address, on non-loopback binds (None: no per-client bound)."""
    session_time_limit_s: float | None = Field(default=None, gt=0)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    root_path: str = ""
    api_key: str | None = Field(default=None, min_length=1, repr=False)
    models_dir: Path | None = None
    data_dir: Path | None = None
    """Where small per-user state lives (onboarding status); default: `default_data_dir()`."""
    recording: RecordingLimits = Field(default_factory=RecordingLimits)
    front_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_]{0,31}$")
    """Prefix of this front's session ids (`front2-<uuid>`), for load balancers."""
    devices: list[str] | None = None
    """One pipeline worker per device (`cuda:0`, `cuda:1`, `cpu`); None: one, the default."""
    backend: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    ray_workers: int | None = Field(default=None, ge=1)
    ray_gpus_per_worker: float | None = Field(default=None, ge=0)
    osc_port: int | None = Field(default=None, ge=0, le=65535)
    """UDP port of OSC control; None: the HTTP port on loopback binds, off on others; 0: off."""
    osc_host: str | None = None
    """Address OSC binds to; None: `host`."""
    assets_dir: Path | None = None
    """Uploaded reference images; default: `data_dir`/assets."""
    asset_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    lora_dir: Path | None = None
    """LoRA files (`load_params.loras`, `/api/v1/loras`); default: `data_dir`/loras."""
    lora_max_bytes: int = Field(default=2 * 1024**3, ge=1024)
    """Largest LoRA file an install downloads."""
    lora_hosts: list[str] = Field(default_factory=lambda: list(LORA_HOSTS))
    """Hosts LoRA installs may download from (and their sub-domains)."""

    def assets_folder(self) -> Path:
        return self.assets_dir or (self.data_dir or default_data_dir()) / "assets"

    def lora_folder(self) -> Path:
        return self.lora_dir or (self.data_dir or default_data_dir()) / "loras"

    def cors_origin_regex(self) -> str:
        extra = [re.escape(o.rstrip("/")) for o in self.cors_origins if o != "*"]
        return "^(" + "|".join([LOCAL_ORIGINS, *extra]) + ")$"


def default_data_dir() -> Path:
    """The per-user data folder: $LIVEV2V_DATA_DIR, else the platform's usual place
    (~/.local/share/livev2v, ~/Library/Application Support/livev2v, %LOCALAPPDATA%\\livev2v)."""
    if os.environ.get("LIVEV2V_DATA_DIR"):
        return Path(os.environ["LIVEV2V_DATA_DIR"])
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "livev2v"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "livev2v"
    return Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share") / "livev2v"
