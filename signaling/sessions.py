"""The registry of live sessions: creates them from offers, finds them, closes them.

Two bounds, so that offers which never connect cannot hold the streaming slots: connected
sessions count against `max_sessions` (what the pipeline serves); pending ones (answered, ICE or
DTLS not done) against their own `max_pending`, and per client address against
`max_pending_per_client` (set on public binds).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiortc import RTCConfiguration

from pipeline import ParameterUpdate, PipelineService

from .ice import IceServerProvider, to_aiortc
from .looplag import LoopLagProbe
from .recording import RecordingLimits
from .sdp import check_offer
from .session import Session
from .viewer import Viewer

log = logging.getLogger(__name__)


class CapacityError(RuntimeError):
    """Too many sessions; the client should retry later."""


class ClientLimitError(CapacityError):
    """This client already has too many offers waiting to connect."""


class UnknownSessionError(LookupError):
    """No live session by that id (or no live WHIP ingest to watch)."""


MAX_VIEWERS_PER_SESSION = 16
"""WHEP viewers of one session (they share its encode; each still costs packetization, SRTP
and a peer connection's I/O on the event loop: benchmarks/whep.py)."""


class SessionRegistry:
    def __init__(self, service: PipelineService, ice: IceServerProvider, *,
                 max_sessions: int | None = None, connect_timeout_s: float = 30.0,
                 time_limit_s: float | None = None,
                 recording: RecordingLimits | None = None, front_id: str | None = None,
                 max_pending: int | None = None, max_pending_per_client: int | None = None,
                 ice_idle_s: float = 10.0, loop_lag: LoopLagProbe | None = None) -> None:
        self.service = service
        self.id_prefix = f"{front_id}-" if front_id else ""
        """Session ids start with the front's name, so a load balancer can route a session's
        PATCH and DELETE to the front that owns it (docs/scaling.md)."""
        self.recording_limits = recording or RecordingLimits()
        self.ice = ice
        self._max_sessions = max_sessions
        self.connect_timeout_s = connect_timeout_s
        self.time_limit_s = time_limit_s
        self._max_pending = max_pending
        self.max_pending_per_client = max_pending_per_client
        self.ice_idle_s = ice_idle_s
        self.loop_lag = loop_lag
        self.closed_counters: Counter[str] = Counter()  # frame totals of sessions gone
        self._sessions: dict[str, Session] = {}
        self._viewers: dict[str, Viewer] = {}

    @property
    def max_sessions(self) -> int:
        """--max-sessions when given, else what the loaded pipeline can serve on each worker
        times the workers that have it loaded."""
        if self._max_sessions is not None:
            return self._max_sessions
        cls = self.service.pipeline_class
        return (cls.max_sessions if cls is not None else 8) * self.service.capacity_workers

    @property
    def max_pending(self) -> int:
        """--max-pending when given, else twice the streaming capacity (at least 16)."""
        if self._max_pending is not None:
            return self._max_pending
        return max(16, 2 * self.max_sessions)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def live(self) -> list[Session]:
        """Sessions not closing, oldest first."""
        return [s for s in self._sessions.values() if not s.closing]

    def connected(self) -> list[Session]:
        """Sessions that connected and are not closing: what streams."""
        return [s for s in list(self._sessions.values())
                if s.connected_at is not None and not s.closing]

    def pending(self) -> list[Session]:
        """Sessions answered but not connected yet."""
        return [s for s in list(self._sessions.values()) if s.pending]

    def peer(self, peer_id: str) -> Session | Viewer | None:
        """A session or a WHEP viewer by id (trickle and DELETE work on both)."""
        return self._sessions.get(peer_id) or self._viewers.get(peer_id)

    def viewers(self) -> list[Viewer]:
        return list(self._viewers.values())

    def latest_ingest(self) -> Session | None:
        """The most recent live WHIP ingest (what `POST /api/v1/whep` plays)."""
        ingests = [s for s in self.live() if s.ingest == "whip"]
        return max(ingests, key=lambda s: s.created) if ingests else None

    async def watch(self, session_id: str | None, sdp: str, sdp_type: str,
                    client: str | None = None) -> Viewer:
        """Answer a receive-only offer with a viewer of `session_id`'s output (None: the latest
        WHIP ingest). Raises SdpError, UnknownSessionError, CapacityError."""
        check_offer(sdp, sdp_type)
        session = self.latest_ingest() if session_id is None else self.get(session_id)
        if session is None or session.closing:
            raise UnknownSessionError("No live WHIP ingest to watch." if session_id is None
                                      else f"Session {session_id!r} not found or closed.")
        if session.fanout.viewers >= MAX_VIEWERS_PER_SESSION:
            raise CapacityError(f"Session {session.id} already has {MAX_VIEWERS_PER_SESSION} "
                                "viewers; try again later.")
        configuration = RTCConfiguration(iceServers=to_aiortc(await self.ice.servers()))
        if session.closing:
            raise UnknownSessionError(f"Session {session.id!r} closed.")
        viewer = Viewer(session.fanout, configuration, watching=session.id,
                        connect_timeout_s=self.connect_timeout_s, on_closed=self._forget_viewer,
                        client=client)
        self._viewers[viewer.id] = viewer
        try:
            await viewer.answer(sdp)
        except BaseException:
            await viewer.close()
            raise
        log.info("viewer %s watches %s (%d viewers)", viewer.id, session.id,
                 session.fanout.viewers)
        return viewer

    def _forget_viewer(self, viewer: Viewer) -> None:
        self._viewers.pop(viewer.id, None)

    async def open(self, sdp: str, sdp_type: str, initial: ParameterUpdate | None,
                   client: str | None = None, *, ingest: str = "offer") -> Session:
        """Answer an offer from `client` (its address); `ingest` says how it came ("offer",
        "whip"). Raises SdpError, CapacityError (ClientLimitError for one client's excess) and
        the service's load errors."""
        summary = check_offer(sdp, sdp_type)
        self._check_capacity(client)
        configuration = RTCConfiguration(iceServers=to_aiortc(await self.ice.servers()))
        self._check_capacity(client)  # other offers may have come in while we waited
        session = Session(self.service, configuration, connect_timeout_s=self.connect_timeout_s,
                          time_limit_s=self.time_limit_s, on_closed=self._forget,
                          on_connected=self._admit, recording=self.recording_limits,
                          id_prefix=self.id_prefix, client=client, ice_idle_s=self.ice_idle_s,
                          loop_lag=self.loop_lag, ingest=ingest)
        self._sessions[session.id] = session
        try:
            await session.answer(sdp, summary, initial)
        except BaseException:
            await session.close(notify=False)
            raise
        log.info("session %s opened (%d connected, %d pending)", session.id,
                 len(self.connected()), len(self.pending()))
        return session

    def _check_capacity(self, client: str | None) -> None:
        if len(self.connected()) >= self.max_sessions:
            raise CapacityError(f"The server is at capacity ({self.max_sessions} sessions); "
                                "try again in a moment.")
        pending = self.pending()
        if len(pending) >= self.max_pending:
            raise CapacityError(f"Too many connections are being set up ({self.max_pending}); "
                                "try again in a moment.")
        limit = self.max_pending_per_client
        if (limit is not None and client is not None
                and sum(1 for s in pending if s.client == client) >= limit):
            raise ClientLimitError(f"Too many offers from {client} are still connecting "
                                   f"(limit {limit}); finish or close them first.")

    def _admit(self, session: Session) -> None:
        """A pending session connected: it streams if a slot is free (the slots may have
        filled since its offer was answered), else it is told so and closed."""
        others = sum(1 for s in self.connected() if s is not session)
        if others >= self.max_sessions:
            log.info("session %s connected but the server is at capacity; closing", session.id)
            session.refuse(f"The server is at capacity ({self.max_sessions} sessions); "
                           "try again in a moment.")

    def frame_counters(self) -> Counter[str]:
        """Frame totals since start, of sessions gone and live (monotonic: a session's counts
        move to `closed_counters` as it leaves)."""
        totals = Counter(self.closed_counters)
        for session in list(self._sessions.values()):
            totals.update(session.counters())
        return totals

    def _forget(self, session: Session) -> None:
        if self._sessions.get(session.id) is session:
            self.closed_counters.update(session.counters())
        self._sessions.pop(session.id, None)

    async def close_all(self, reason: str | None) -> None:
        sessions = list(self._sessions.values())
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)
        await asyncio.gather(*(v.close() for v in self.viewers()), return_exceptions=True)
