"""What the route modules share: the server's long-lived objects and settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pipeline import PipelineService

from ..config import ServerSettings
from ..ice import IceServerProvider
from ..sessions import SessionRegistry

RETRY_AFTER_S = "2"


@dataclass
class ApiContext:
    sessions: SessionRegistry
    service: PipelineService
    ice: IceServerProvider
    settings: ServerSettings
    version: str
    started: float = field(default_factory=time.time)
