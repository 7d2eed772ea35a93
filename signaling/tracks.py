"""The outgoing video track: the pipeline's output, paced at its timestamps, pulled by aiortc."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

MAX_GAP_S = 1.0
"""A timestamp step larger than this (or backwards) is a discontinuity, not a pace to keep."""


class PipelineTrack(MediaStreamTrack):
    """Plays each pipeline call's output: a chunk's frames leave at the spacing of their
    timestamps (the input's frame rate) instead of as a burst; a single frame (image pipelines)
    leaves at once. Latency stays bounded: single frames are latest-wins, and chunks never pile
    up beyond two; the oldest frames are dropped (counted), never queued."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[VideoFrame, float]] = deque()  # (frame, when to release it)
        self._changed = asyncio.Event()
        self._last: tuple[float, float] | None = None  # (timestamp s, release time) of the newest
        self.dropped = 0
        self.on_sent: Callable[[VideoFrame], None] | None = None
        """Called with each frame as it goes to the encoder (server-side recording)."""

    def deliver(self, frames: Sequence[VideoFrame]) -> None:
        """One call's output, in display order. Called on the event loop (the worker hands over
        with call_soon_threadsafe)."""
        if not frames:
            return
        now = self._loop.time()
        follow_on = bool(self._queue)  # the previous output is still playing
        for i, frame in enumerate(frames):
            stamp = float(frame.pts * frame.time_base) if frame.time_base else 0.0
            due = now
            if (follow_on or i > 0) and self._last is not None:
                step = stamp - self._last[0]
                if 0.0 < step <= MAX_GAP_S:
                    due = max(now, self._last[1] + step)
            self._queue.append((frame, due))
            self._last = (stamp, due)
        # Single frames stay latest-wins; a chunk may follow on from the one still playing.
        limit = 1 if len(frames) == 1 else 2 * len(frames)
        if len(self._queue) > limit:
            for _ in range(len(self._queue) - limit):
                self._queue.popleft()
                self.dropped += 1
            # Shed the wait too: the oldest frame kept leaves now, the rest at their spacing.
            late = self._queue[0][1] - now
            if late > 0:
                self._queue = deque((f, due - late) for f, due in self._queue)
                self._last = (self._last[0], self._last[1] - late) if self._last else None
        self._changed.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def recv(self) -> VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self._queue:
                frame, due = self._queue[0]
                wait = due - self._loop.time()
                if wait <= 0:
                    self._queue.popleft()
                    if self.on_sent is not None:
                        self.on_sent(frame)
                    return frame
            else:
                wait = None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    def stop(self) -> None:
        super().stop()
        self._changed.set()  # wake a pending recv() so that it raises
