"""A WHEP viewer: a receive-only peer that plays one session's output.

A viewer is not a session: it has no pipeline stream and no parameters channel, and it does not
count against the streaming slots. It belongs to the session it watches (`Session.fanout`): it
joins and leaves without touching the producer or the other viewers, and it closes when that
session closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import SessionDescription

from .dtls import answer_as_dtls_server
from .fanout import OutputFanout, ViewerTrack
from .models import IceCandidateModel
from .sdp import SdpError, parse_candidate

log = logging.getLogger(__name__)

VIEWER_PREFIX = "whep-"


class Viewer:
    def __init__(self, fanout: OutputFanout, configuration: RTCConfiguration, *,
                 watching: str, connect_timeout_s: float = 30.0,
                 on_closed: Callable[[Viewer], None] | None = None,
                 client: str | None = None) -> None:
        self.id = f"{VIEWER_PREFIX}{uuid.uuid4()}"
        self.watching = watching
        """The id of the session whose output this viewer plays."""
        self.client = client
        self.created = time.monotonic()
        self.connected_at: float | None = None
        self._fanout = fanout
        self._connect_timeout = connect_timeout_s
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self.pc = RTCPeerConnection(configuration)
        self.track: ViewerTrack | None = None
        self._closing: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_connection_state)

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Apply a checked offer (`check_offer`; its direction does not matter: a viewer only
        sends) and return the complete answer. Raises SdpError when the offer cannot receive
        VP8 (the shared encode's codec)."""
        if not _offers_vp8(sdp):
            raise SdpError("the offer's video m-line does not list VP8, the codec WHEP "
                           "playback sends")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        transceiver = next(t for t in self.pc.getTransceivers() if t.kind == "video")
        vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs
               if c.mimeType.lower() in ("video/vp8", "video/rtx")]
        transceiver.setCodecPreferences(vp8)
        self.track = self._fanout.add()
        self.track.on("ended", self.close_soon)  # the session it watches ended
        transceiver.sender.replaceTrack(self.track)
        transceiver.direction = "sendonly"
        self._fanout.watch_keyframe_requests(transceiver.sender)
        answer_as_dtls_server(self.pc)  # GStreamer's RSA certificate (signaling.dtls)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._timer = self._loop.create_task(self._watch_connect())
        return self.pc.localDescription

    async def add_candidates(self, candidates: list[IceCandidateModel]) -> None:
        parsed = [None if not c.candidate.strip() else
                  parse_candidate(c.candidate, c.sdpMid, c.sdpMLineIndex) for c in candidates]
        for candidate in parsed:
            if candidate is not None:
                await self.pc.addIceCandidate(candidate)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self.connected_at is None:
            log.info("viewer %s: not connected after %.0f s; closing", self.id,
                     self._connect_timeout)
            self.close_soon()

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("viewer %s of %s: connection %s", self.id, self.watching, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self._fanout.request_keyframe()
        if state in ("failed", "closed"):
            self.close_soon()

    def close_soon(self) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = self._loop.create_task(self._close())
        return self._closing

    async def close(self) -> None:
        await asyncio.shield(self.close_soon())

    async def _close(self) -> None:
        if self.track is not None:
            self.track.stop()
        if self._timer is not None:
            self._timer.cancel()
        await self.pc.close()  # sends RTCP BYE: the player's track ends
        self.closed.set()
        if self._on_closed is not None:
            self._on_closed(self)
        log.info("viewer %s of %s closed", self.id, self.watching)


def _offers_vp8(sdp: str) -> bool:
    parsed = SessionDescription.parse(sdp)
    video = next(m for m in parsed.media if m.kind == "video")
    return any(c.mimeType.lower() == "video/vp8" for c in video.rtp.codecs)
