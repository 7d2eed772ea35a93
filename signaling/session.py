"""One WebRTC session: the peer connection and everything it owns.

A `Session` owns its peer connection, the `parameters` channel, the input pump, the output
track, its pipeline stream, its timers and its close(). Nothing else in the server is keyed by
session id except the registry of sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from pipeline import (
    InputFrame,
    OutputFrame,
    ParameterRejectedError,
    ParameterUpdate,
    PipelineService,
    Stream,
)

from .dtls import answer_as_dtls_server
from .fanout import OutputFanout
from .looplag import LoopLagProbe
from .messages import (
    ErrorNotification,
    MessageError,
    ParametersApplied,
    ParametersUpdated,
    ServerMessage,
    Stats,
    StreamStopped,
    parse_update,
    scope_view,
)
from .models import IceCandidateModel
from .receiving import deliver_directly, discard, weak_consumer
from .recording import Recording, RecordingError, RecordingLimits
from .sdp import OfferSummary, parse_candidate
from .tracks import PipelineTrack

log = logging.getLogger(__name__)

CHANNEL_LABEL = "parameters"
STATS_INTERVAL_S = 1.0


class Session:
    def __init__(self, service: PipelineService, configuration: RTCConfiguration, *,
                 connect_timeout_s: float = 30.0, time_limit_s: float | None = None,
                 on_closed: Callable[[Session], None] | None = None,
                 on_connected: Callable[[Session], None] | None = None,
                 recording: RecordingLimits | None = None, id_prefix: str = "",
                 client: str | None = None, ice_idle_s: float = 10.0,
                 loop_lag: LoopLagProbe | None = None, ingest: str = "offer") -> None:
        self.id = f"{id_prefix}{uuid.uuid4()}"  # the prefix names the front (--front-id)
        self.ingest = ingest
        """How the client came in: "offer" (Scope's offer API) or "whip" (RFC 9725)."""
        self.created = time.monotonic()
        self.client = client  # the remote address that sent the offer (per-client bounds)
        self.connected_at: float | None = None  # None while pending (offer answered, no ICE/DTLS)
        self._on_connected = on_connected
        self._ice_idle = ice_idle_s
        self._remote_candidates = 0
        self._refused = False
        self._loop_lag = loop_lag
        self._channel_opened = asyncio.Event()
        self._service = service
        self._loop = asyncio.get_running_loop()
        self._connect_timeout = connect_timeout_s
        self._time_limit = time_limit_s
        self._on_closed = on_closed
        self.pc = RTCPeerConnection(configuration)
        self.output = PipelineTrack()
        self.output.on_sent = self._on_sent
        self.fanout = OutputFanout()  # WHEP viewers of this session's output
        self.recording: Recording | None = None
        self._recording_limits = recording or RecordingLimits()
        self.stream: Stream | None = None
        self.channel: RTCDataChannel | None = None
        self._outbox: list[ServerMessage] = []  # messages produced before the channel opened
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: asyncio.Task[None] | None = None
        self._receiving = False
        self.closed = asyncio.Event()
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # --- setup ----------------------------------------------------------------------------

    async def answer(self, sdp: str, offer: OfferSummary,
                     initial: ParameterUpdate | None) -> RTCSessionDescription:
        """Apply the offer, attach to the pipeline, and return the complete answer (aiortc
        gathers all candidates before it returns: the server does not trickle)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._remote_candidates = offer.candidates
        # Held until the peer connects: a session that never connects costs no pipeline work.
        self.stream = self._service.open_stream(_Sink(self), offers_video=offer.client_sends_video,
                                                initial=initial, held=True)
        # The output is bound to the first video m-line, whatever its direction.
        self.pc.addTrack(self.output)
        if self.ingest == "whip":
            answer_as_dtls_server(self.pc)  # GStreamer's RSA certificate (signaling.dtls)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        if not offer.client_receives_video:
            # Nobody pulls the output for this client (a WHIP sender): play it here, so that it
            # is paced, recorded and seen by viewers as if it were sent.
            self._spawn(self._play_unsent())
        self._spawn(self._watch_connect())
        if self._time_limit is not None:
            self._spawn(self._enforce_time_limit(self._time_limit))
        if initial is not None and initial.recording:
            self._set_recording(True)
        if initial is not None and initial.given():
            self._acknowledge()
        return self.pc.localDescription

    async def add_candidates(self, candidates: list[IceCandidateModel]) -> None:
        """Trickled remote candidates. Raises SdpError for a malformed one (checked first, so
        a bad batch changes nothing)."""
        parsed = [None if not c.candidate.strip() else
                  parse_candidate(c.candidate, c.sdpMid, c.sdpMLineIndex) for c in candidates]
        for candidate in parsed:
            if candidate is not None:  # an empty candidate only marks the end of gathering
                self._remote_candidates += 1
                await self.pc.addIceCandidate(candidate)

    # --- media ----------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video" and not self._receiving:
            self._receiving = True  # only the first video m-line feeds the pipeline
            if not deliver_directly(track, weak_consumer(self._on_decoded)):
                self._spawn(self._pump(track))
                return
        else:
            deliver_directly(track, discard)
        self._spawn(_drain(track))  # ends with the stream

    def _on_decoded(self, frame: VideoFrame) -> None:
        """A received frame, on aiortc's decoder thread (never waiting for the event loop):
        into the stream's window of latest frames. Conversion to RGB happens on the worker, only
        for frames that are processed, and only for pipelines that need RGB."""
        stream = self.stream
        if stream is not None:
            stream.push(_input_frame(frame))

    async def _pump(self, track: MediaStreamTrack) -> None:
        """The same for a track whose frames arrive through `recv()`."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.stream is not None:
                self.stream.push(_input_frame(frame))

    async def _play_unsent(self) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await self.output.recv()  # `on_sent` sees each frame

    def _on_sent(self, frame: VideoFrame) -> None:
        """Each output frame as it leaves: to the recording and to the WHEP viewers."""
        if self.recording is not None:
            self.recording.offer(frame)
        self.fanout.offer(frame)

    # --- server-side recording ---------------------------------------------------------------

    def start_recording(self) -> Recording:
        """Record what this session sends from now on (a running recording carries on; a
        stopped one that was not downloaded is replaced). Raises RecordingError."""
        if self.recording is not None and self.recording.recording:
            return self.recording
        previous, self.recording = self.recording, Recording(self.id, self._recording_limits)
        if previous is not None:  # its encoder may still be flushing: delete it off the loop
            self._spawn(asyncio.to_thread(previous.discard))
        return self.recording

    def take_recording(self) -> Recording | None:
        """Hand the recording over (to a download, which deletes the file afterwards)."""
        recording, self.recording = self.recording, None
        return recording

    def _set_recording(self, on: bool) -> None:
        """The `recording` key of the parameters channel."""
        if on:
            try:
                self.start_recording()
            except RecordingError as exc:
                self.send(ErrorNotification(error_message=str(exc)))
        elif self.recording is not None and self.recording.recording:
            self._spawn(asyncio.to_thread(self.recording.stop, "stopped by the client"))

    # --- the parameters channel -------------------------------------------------------------

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL or self.channel is not None:
            return
        self.channel = channel
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        self._channel_opened.set()
        outbox, self._outbox = self._outbox, []
        for message in outbox:
            self.send(message)
        self._spawn(self._send_stats())

    def _on_message(self, raw: str | bytes) -> None:
        if self.stream is None:
            return
        try:
            update = parse_update(raw)
        except MessageError as exc:
            self.send(ErrorNotification(error_message=str(exc)))
            return
        try:
            self.stream.update(update)
        except ParameterRejectedError as exc:
            self.send(ErrorNotification(error_message=str(exc)))
            return
        if update.recording is not None:
            self._set_recording(update.recording)
        self._acknowledge()  # never parameters_updated: Scope's app would undo its own edit

    def apply_from_elsewhere(self, update: ParameterUpdate) -> None:
        """An update this client did not make (an HTTP route): Scope's `parameters_updated`
        with the changed Scope keys, then our acknowledgement. Raises ParameterRejectedError
        (UnsupportedModeError, LoraScaleError)."""
        if self.stream is None or self.closing:
            return
        self.stream.update(update)
        if update.recording is not None:
            self._set_recording(update.recording)
        view = scope_view(update)
        if view:
            self.send(ParametersUpdated(parameters=view))
        self._acknowledge()

    def parameters(self) -> dict[str, Any]:
        """The values in force now (defaults included)."""
        return self.stream.effective_parameters() if self.stream is not None else {}

    def _acknowledge(self) -> None:
        self.send(ParametersApplied(parameters=self.parameters()))

    def send(self, message: ServerMessage) -> None:
        channel = self.channel
        if channel is None or channel.readyState == "connecting":
            self._outbox.append(message)
        elif channel.readyState == "open":
            channel.send(message.model_dump_json())

    async def _send_stats(self) -> None:
        while self.channel is not None and self.channel.readyState == "open":
            await asyncio.sleep(STATS_INTERVAL_S)
            if self.stream is not None and self.channel.readyState == "open":
                lag = self._loop_lag.max_lag_s() if self._loop_lag is not None else None
                self.send(Stats(**self.stream.stats.snapshot(),
                                frames_dropped_output=self.output.dropped,
                                input_mode=self.stream.params.input_mode,
                                event_loop_lag_ms=None if lag is None else round(lag * 1000, 1)))

    def counters(self) -> dict[str, int]:
        """Frame totals so far (for the server's metrics)."""
        stats = self.stream.stats if self.stream is not None else None
        return {"in": stats.frames_in if stats else 0, "out": stats.frames_out if stats else 0,
                "dropped_input": stats.frames_dropped if stats else 0,
                "dropped_output": self.output.dropped}

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Answered but not connected yet (ICE or DTLS not done), and not closing."""
        return self.connected_at is None and not self.closing

    async def _watch_connect(self) -> None:
        # ICE has nothing to check without a remote candidate: do not wait the full timeout.
        idle = min(self._ice_idle, self._connect_timeout)
        await asyncio.sleep(idle)
        if self.connected_at is None and self._remote_candidates == 0:
            log.info("session %s: no ICE candidate from the client after %.0f s; closing",
                     self.id, idle)
            self.close_soon("No ICE candidates arrived from the client")
            return
        await asyncio.sleep(self._connect_timeout - idle)
        if self.connected_at is None:
            log.info("session %s: not connected after %.0f s; closing", self.id,
                     self._connect_timeout)
            self.close_soon("Connection did not complete in time")

    async def _enforce_time_limit(self, limit_s: float) -> None:
        await asyncio.sleep(limit_s)
        self.close_soon(f"Session time limit reached ({limit_s:g} s); reconnect to continue")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.info("session %s: connection %s", self.id, state)
        if state == "connected" and self.connected_at is None and not self.closing:
            self.connected_at = time.monotonic()
            if self._on_connected is not None:
                self._on_connected(self)  # may refuse it (the streaming slots filled meanwhile)
            if self.stream is not None and not self.closing:
                self.stream.release()
        if state in ("failed", "closed"):
            self.close_soon(None if state == "closed" else "Connection failed")

    @property
    def closing(self) -> bool:
        return self._closing is not None or self._refused

    def refuse(self, error: str, wait_s: float = 5.0) -> None:
        """Close a just-connected session with `error`, once its channel can carry the
        stream_stopped (it opens just after the connection); it streams nothing meanwhile."""
        self._refused = True

        async def refuse() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel_opened.wait(), wait_s)
            self.close_soon(error)

        self._spawn(refuse())

    def close_soon(self, error: str | None = None, *, notify: bool = True) -> asyncio.Task[None]:
        """Start closing (once); callbacks that cannot await use this."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._close(error, notify))
        return self._closing

    async def close(self, error: str | None = None, *, notify: bool = True) -> None:
        """Stop the stream: tell the client (stream_stopped), then free everything. Idempotent."""
        await asyncio.shield(self.close_soon(error, notify=notify))

    async def _close(self, error: str | None, notify: bool) -> None:
        if self.stream is not None:
            self.stream.close()
        if notify:
            self.send(StreamStopped(error_message=error))
            await self._flush_channel()
        self.output.stop()
        self.fanout.close()  # the viewers' tracks end; their peers close with them
        if self.recording is not None:
            await asyncio.to_thread(self.recording.discard)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await self.pc.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.closed.set()
        if self._on_closed is not None:
            self._on_closed(self)
        log.info("session %s closed%s", self.id, f": {error}" if error else "")

    async def _flush_channel(self, timeout_s: float = 0.5) -> None:
        """Give the last message a moment to leave before the transport goes away."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > 0:
            drained = asyncio.Event()
            channel.bufferedAmountLowThreshold = 0
            channel.once("bufferedamountlow", drained.set)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), timeout_s)
        await asyncio.sleep(0.05)  # SCTP has queued it; let the packet leave

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Sink:
    """The stream's results, handed from the worker thread to the session's event loop."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._loop = session._loop

    def on_frames(self, frames: Sequence[OutputFrame]) -> None:
        videos = []
        for frame in frames:  # conversion on the worker, not the loop
            if isinstance(frame.image, VideoFrame):
                video = frame.image  # a received frame passed through untouched
            else:
                video = VideoFrame.from_ndarray(frame.image, format="rgb24")
            video.pts, video.time_base = frame.pts, frame.time_base
            videos.append(video)
        self._call(self._session.output.deliver, videos)

    def on_stopped(self, message: str) -> None:
        self._call(self._session.close_soon, message)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed at shutdown
            self._loop.call_soon_threadsafe(fn, *args)


def _input_frame(frame: VideoFrame) -> InputFrame:
    return InputFrame(decode=lambda: frame.to_ndarray(format="rgb24"), native=frame,
                      pts=frame.pts, time_base=frame.time_base, arrived=time.monotonic())


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
