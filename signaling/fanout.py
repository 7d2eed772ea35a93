"""One VP8 encode of a session's output, shared by all of its WHEP viewers.

aiortc's `RTCRtpSender` packetizes an `av.Packet` that its track returns instead of encoding a
frame (`Encoder.pack`), so the frames a session sends are encoded here once, whatever the number
of viewers, and each viewer's track hands the same packets to its own sender. What aiortc would
do per sender is done here for all of them:
- a keyframe when a viewer joins, and when any viewer's receiver asks for one (PLI/FIR reach
  `request_keyframe` through `watch_keyframe_requests`);
- latest-wins encoding off the event loop: a slow encode skips frames, it never queues them.
A viewer that falls behind (its queue overflows) skips to the next keyframe; the others do not
notice. The bitrate is fixed (no per-viewer REMB adaptation: one encode cannot follow each
viewer's bandwidth estimate).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque

import av
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from av.packet import Packet
from av.video.codeccontext import VideoCodecContext
from av.video.reformatter import VideoReformatter

from .encoder import open_live_vp8

log = logging.getLogger(__name__)

BITRATE = 1_500_000
"""Bits/s of the shared encode (a 512² restyled picture looks clean at this rate on loopback
and on a LAN; viewers over slow links get it anyway: there is no per-viewer adaptation)."""
CLOCK = fractions.Fraction(1, 90_000)
MAX_QUEUED = 30
"""Packets a viewer may have waiting (1.5 s at 20 fps) before it is made to skip ahead."""


class ViewerTrack(MediaStreamTrack):
    """What one viewer's sender pulls: the shared encode's packets, from a keyframe on."""

    kind = "video"

    def __init__(self, fanout: OutputFanout) -> None:
        super().__init__()
        self._fanout = fanout
        self._queue: deque[Packet] = deque()
        self._ready = asyncio.Event()
        self._keyframe_needed = True
        self.skipped = 0
        """Times this viewer fell behind and skipped to a keyframe."""

    def put(self, packet: Packet) -> None:
        if self._keyframe_needed:
            if not packet.is_keyframe:
                return
            self._keyframe_needed = False
        if len(self._queue) >= MAX_QUEUED:
            self._queue.clear()
            self.skipped += 1
            self._keyframe_needed = not packet.is_keyframe
            if self._keyframe_needed:
                self._fanout.request_keyframe()
                return
        self._queue.append(packet)
        self._ready.set()

    async def recv(self) -> Packet:  # type: ignore[override]  # aiortc packs Packets as is
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self._fanout.remove(self)
        self._ready.set()  # wake a pending recv() so that it raises


class OutputFanout:
    """A session's output frames in, VP8 packets out to every `ViewerTrack`. Encodes only while
    there are viewers (a session nobody watches costs nothing here)."""

    def __init__(self, bitrate: int = BITRATE) -> None:
        self._loop = asyncio.get_running_loop()
        self._bitrate = bitrate
        self._tracks: list[ViewerTrack] = []
        self._codec: VideoCodecContext | None = None
        self._reformatter = VideoReformatter()
        self._next: VideoFrame | None = None
        self._encoding = False
        self._keyframe = False
        self.encoded = 0
        """Frames encoded (once each, whatever the number of viewers)."""
        self.skipped = 0
        """Frames that a newer one replaced while the encoder was busy."""

    @property
    def viewers(self) -> int:
        return len(self._tracks)

    def add(self) -> ViewerTrack:
        track = ViewerTrack(self)
        self._tracks.append(track)
        self.request_keyframe()  # the newcomer can only start from one
        return track

    def remove(self, track: ViewerTrack) -> None:
        with contextlib.suppress(ValueError):
            self._tracks.remove(track)

    def request_keyframe(self) -> None:
        self._keyframe = True

    def watch_keyframe_requests(self, sender: RTCRtpSender) -> None:
        """Route a viewer's PLI/FIR to the shared encoder: aiortc only sets a flag of its own
        sender, which an encoder it does not run would never read."""
        original = sender._send_keyframe

        def send_keyframe() -> None:
            original()
            self.request_keyframe()

        sender._send_keyframe = send_keyframe  # type: ignore[method-assign]

    def offer(self, frame: VideoFrame) -> None:
        """A frame the session sends (on the event loop). Latest wins while encoding."""
        if not self._tracks:
            return
        if self._next is not None:
            self.skipped += 1
        self._next = frame
        if not self._encoding:
            self._encoding = True
            self._loop.create_task(self._encode_pending())

    async def _encode_pending(self) -> None:
        try:
            while self._next is not None and self._tracks:
                frame, self._next = self._next, None
                keyframe, self._keyframe = self._keyframe, False
                try:
                    packets = await self._loop.run_in_executor(None, self._encode, frame,
                                                               keyframe)
                except (av.FFmpegError, ValueError) as exc:
                    log.warning("shared encode failed (%s); the next frame starts anew", exc)
                    self._codec, self._keyframe = None, True
                    continue
                for packet in packets:
                    for track in list(self._tracks):
                        track.put(packet)
        finally:
            self._encoding = False

    def _encode(self, frame: VideoFrame, keyframe: bool) -> list[Packet]:
        """On the executor (one encode at a time: `_encoding` guards it)."""
        # Our own converter: `frame.reformat()` would use the frame's cached one, which the
        # session's own encoder may be using on another thread for the same frame (a crash).
        frame = self._reformatter.reformat(frame, format="yuv420p")
        codec = self._codec
        if codec is None or codec.width != frame.width or codec.height != frame.height:
            codec = self._codec = open_live_vp8(frame.width, frame.height, self._bitrate)
            keyframe = True  # a new codec starts with one anyway
        if keyframe:  # only ever set: the frame may be the producer's too (passthrough)
            frame.pict_type = av.video.frame.PictureType.I
        stamp = int(time.monotonic() * 90_000)  # viewers play at arrival: wall-clock stamps
        packets = codec.encode(frame)
        for packet in packets:
            packet.pts, packet.time_base = stamp, CLOCK
        self.encoded += 1
        return packets

    def close(self) -> None:
        """The session ended: every viewer's track ends (their peers close with them)."""
        for track in list(self._tracks):
            track.stop()
        self._tracks.clear()
        self._next, self._codec = None, None
