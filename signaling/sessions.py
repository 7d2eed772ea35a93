"""The registry of live sessions: creates them from offers, finds them, closes them."""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCConfiguration

from pipeline import ParameterUpdate, PipelineService

from .ice import IceServerProvider, to_aiortc
from .recording import RecordingLimits
from .sdp import check_offer
from .session import Session

log = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """Too many sessions; the client should retry later."""


class SessionRegistry:
    def __init__(self, service: PipelineService, ice: IceServerProvider, *,
                 max_sessions: int | None = None, connect_timeout_s: float = 30.0,
                 time_limit_s: float | None = None,
                 recording: RecordingLimits | None = None, front_id: str | None = None) -> None:
        self.service = service
        self.id_prefix = f"{front_id}-" if front_id else ""
        """Session ids start with the front's name, so a load balancer can route a session's
        PATCH and DELETE to the front that owns it (docs/scaling.md)."""
        self.recording_limits = recording or RecordingLimits()
        self.ice = ice
        self._max_sessions = max_sessions
        self.connect_timeout_s = connect_timeout_s
        self.time_limit_s = time_limit_s
        self._sessions: dict[str, Session] = {}

    @property
    def max_sessions(self) -> int:
        """--max-sessions when given, else what the loaded pipeline can serve on each worker
        times the workers that have it loaded."""
        if self._max_sessions is not None:
            return self._max_sessions
        cls = self.service.pipeline_class
        return (cls.max_sessions if cls is not None else 8) * self.service.capacity_workers

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def live(self) -> list[Session]:
        """Sessions not closing, oldest first."""
        return [s for s in self._sessions.values() if not s.closing]

    async def open(self, sdp: str, sdp_type: str, initial: ParameterUpdate | None) -> Session:
        """Answer an offer. Raises SdpError, CapacityError and the service's load errors."""
        summary = check_offer(sdp, sdp_type)
        if len(self._sessions) >= self.max_sessions:
            raise CapacityError(f"The server is at capacity ({self.max_sessions} sessions); "
                                "try again in a moment.")
        configuration = RTCConfiguration(iceServers=to_aiortc(await self.ice.servers()))
        session = Session(self.service, configuration, connect_timeout_s=self.connect_timeout_s,
                          time_limit_s=self.time_limit_s, on_closed=self._forget,
                          recording=self.recording_limits, id_prefix=self.id_prefix)
        self._sessions[session.id] = session
        try:
            await session.answer(sdp, summary, initial)
        except BaseException:
            await session.close(notify=False)
            raise
        log.info("session %s opened (%d live)", session.id, len(self._sessions))
        return session

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    async def close_all(self, reason: str | None) -> None:
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)
