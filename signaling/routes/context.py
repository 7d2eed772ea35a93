"""What the route modules share: the server's long-lived objects and settings."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pipeline import PipelineService

from ..config import ServerSettings, default_data_dir
from ..ice import IceServerProvider
from ..logbuffer import LogBuffer
from ..metrics import ServerMetrics
from ..onboarding import OnboardingStore
from ..osc import OUTCOMES, OscControl, osc_bind
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
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the server starts shutting down: long-lived responses (event streams) end."""
    logs: LogBuffer = field(init=False)
    onboarding: OnboardingStore = field(init=False)
    metrics: ServerMetrics = field(init=False)
    osc: OscControl = field(init=False)

    def __post_init__(self) -> None:
        self.logs = LogBuffer(secrets=[self.settings.api_key])
        self.onboarding = OnboardingStore(self.settings.data_dir or default_data_dir())
        self.metrics = ServerMetrics(self.sessions, self.service)
        settings = self.settings
        counter = self.metrics.osc_messages
        for outcome in OUTCOMES:  # listed at 0 before the first message
            counter.labels(outcome)
        self.osc = OscControl(self.sessions, self.service,
                              osc_bind(settings.host, settings.port, settings.osc_host,
                                       settings.osc_port),
                              count=lambda outcome: counter.labels(outcome).inc())
