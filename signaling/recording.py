"""Server-side recording of a session's output video to an H.264 MP4 (PyAV).

The output track hands every frame it sends to `Recording.offer` on the event loop; that only
puts the frame in a small queue (or drops it, counted, when the encoder is behind), so the
stream never waits for the recorder. A thread per recording converts and encodes. Recordings
are bounded in duration and size (they stop by themselves at the limit) and live as temp files
that the session deletes when it ends, or the route after a download.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
from av import VideoFrame
from av.video.reformatter import VideoReformatter
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

QUEUE_FRAMES = 8
"""Frames waiting for the encoder; past this, new frames are dropped (the stream never waits)."""
TIME_BASE = Fraction(1, 1000)  # pts in milliseconds of wall-clock time since the first frame
H264_ENCODERS = ("libx264", "libopenh264", "h264")


class RecordingLimits(BaseModel):
    """Bounds of every recording (server options)."""

    max_seconds: float = Field(default=600.0, gt=0, le=24 * 3600)
    max_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    directory: Path | None = None
    """Where the temp files go (None: the system temp folder)."""


class RecordingInfo(BaseModel):
    session_id: str
    status: Literal["recording", "stopped"]
    frames: int
    dropped_frames: int
    duration_s: float
    size_bytes: int
    width: int | None
    height: int | None
    codec: str | None
    stopped_reason: str | None = None
    max_seconds: float
    max_bytes: int


class RecordingError(RuntimeError):
    """The recording could not be made (no encoder, disk full...)."""


def h264_encoder() -> str:
    """The first H.264 encoder this PyAV build has (libx264 on the PyPI wheels)."""
    for name in H264_ENCODERS:
        with contextlib.suppress(Exception):
            av.Codec(name, "w")
            return name
    raise RecordingError("This PyAV build has no H.264 encoder (looked for "
                         f"{', '.join(H264_ENCODERS)}); install the PyPI wheel of av.")


class Recording:
    """One session's recording: a temp MP4 file and the thread that encodes into it."""

    def __init__(self, session_id: str, limits: RecordingLimits) -> None:
        self.session_id = session_id
        self.limits = limits
        self.codec = h264_encoder()
        fd, name = tempfile.mkstemp(prefix="livev2v-rec-", suffix=".mp4",
                                    dir=limits.directory)
        os.close(fd)
        self.path = Path(name)
        self._queue: queue.Queue[tuple[VideoFrame, float] | None] = queue.Queue(QUEUE_FRAMES)
        self._stopping = threading.Event()
        self._abandon = threading.Event()  # discard: skip what is queued, no flush
        # Our own scaler: a VideoFrame's cached one is shared with the WebRTC encoder's
        # thread, and two threads in one SwsContext deadlock.
        self._scaler = VideoReformatter()
        self._lock = threading.Lock()
        self.frames = 0
        self.dropped = 0
        self.size_bytes = 0
        self.width: int | None = None
        self.height: int | None = None
        self.duration_s = 0.0
        self.stopped_reason: str | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._encode, daemon=True,
                                        name=f"recording-{session_id[:8]}")
        self._thread.start()

    @property
    def recording(self) -> bool:
        return not self._stopping.is_set()

    def offer(self, frame: VideoFrame) -> None:
        """A frame the session sent. Never blocks: a full queue drops the frame (counted)."""
        if self._stopping.is_set():
            return
        try:
            self._queue.put_nowait((frame, time.monotonic()))
        except queue.Full:
            with self._lock:
                self.dropped += 1

    def stop(self, reason: str | None = None) -> None:
        """Finish the file (blocks until the encoder has flushed: call it off the loop)."""
        if not self._stopping.is_set():
            with self._lock:
                self.stopped_reason = self.stopped_reason or reason
            self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wake the encoder if it waits for a frame
        self._thread.join()

    def discard(self) -> None:
        """Stop at once (queued frames are skipped) and delete the file."""
        self._abandon.set()
        self.stop("session ended")
        self.path.unlink(missing_ok=True)

    def info(self) -> RecordingInfo:
        with self._lock:
            return RecordingInfo(
                session_id=self.session_id,
                status="recording" if self.recording else "stopped",
                frames=self.frames, dropped_frames=self.dropped,
                duration_s=round(self.duration_s, 3), size_bytes=self.size_bytes,
                width=self.width, height=self.height, codec=self.codec,
                stopped_reason=self.error or self.stopped_reason,
                max_seconds=self.limits.max_seconds, max_bytes=self.limits.max_bytes)

    # --- the encoder thread -------------------------------------------------------------------

    def _encode(self) -> None:
        container = None
        stream = None
        first: float | None = None
        last_pts = -1
        try:
            container = av.open(str(self.path), "w", format="mp4")
            while True:
                try:
                    item = self._queue.get(timeout=0.5)
                except queue.Empty:
                    item = None
                if self._abandon.is_set():
                    break
                if item is None:
                    if self._stopping.is_set():
                        break
                    continue
                frame, sent = item
                if stream is None:
                    stream = self._open_stream(container, frame)
                    first = sent
                assert first is not None
                elapsed = sent - first
                if elapsed > self.limits.max_seconds:
                    self._stop_at_limit(f"duration limit reached ({self.limits.max_seconds:g} s)")
                    break
                picture = self._scaler.reformat(frame, width=stream.width, height=stream.height,
                                                format="yuv420p", threads=1)
                if picture is frame:  # nothing to convert: the sender's own frame, not ours to
                    # restamp (its encoder reads it too): a copy
                    picture = VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
                pts = max(last_pts + 1, int(elapsed * 1000))
                picture.pts, picture.time_base, last_pts = pts, TIME_BASE, pts
                self._mux(container, stream.encode(picture))
                with self._lock:
                    self.frames += 1
                    self.duration_s = elapsed
                if self.size_bytes >= self.limits.max_bytes:
                    self._stop_at_limit(f"size limit reached ({self.limits.max_bytes} bytes)")
                    break
            if stream is not None and not self._abandon.is_set():
                self._mux(container, stream.encode(None))
        except Exception as exc:  # noqa: BLE001 - a broken recording must not touch the stream
            log.warning("recording %s failed: %s", self.session_id, exc)
            with self._lock:
                self.error = f"recording failed: {exc}"
            self._stopping.set()
        finally:
            if container is not None:
                with contextlib.suppress(Exception):
                    container.close()
            self._stopping.set()
            while not self._queue.empty():  # release queued frames
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()

    def _open_stream(self, container: av.container.OutputContainer,
                     frame: VideoFrame) -> av.video.stream.VideoStream:
        stream = container.add_stream(self.codec, rate=30)
        # yuv420p needs even dimensions; later frames of another size are scaled to these.
        stream.width, stream.height = max(2, frame.width & ~1), max(2, frame.height & ~1)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        if self.codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "crf": "23"}
        with self._lock:
            self.width, self.height = stream.width, stream.height
        return stream

    def _mux(self, container: av.container.OutputContainer, packets: list[av.Packet]) -> None:
        for packet in packets:
            container.mux(packet)
            with self._lock:
                self.size_bytes += packet.size

    def _stop_at_limit(self, reason: str) -> None:
        log.info("recording %s stopped: %s", self.session_id, reason)
        with self._lock:
            self.stopped_reason = reason
        self._stopping.set()
