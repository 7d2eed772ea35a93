"""The outgoing video track: whatever the pipeline produced last, pulled by aiortc's sender."""

from __future__ import annotations

import asyncio

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame


class PipelineTrack(MediaStreamTrack):
    """A latest-wins output slot: if the encoder is slower than the pipeline, the older frame
    is dropped (counted), never queued."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._frame: VideoFrame | None = None
        self._ready = asyncio.Event()
        self.dropped = 0

    def deliver(self, frame: VideoFrame) -> None:
        """Called on the event loop (the worker hands over with call_soon_threadsafe)."""
        if self._frame is not None:
            self.dropped += 1
        self._frame = frame
        self._ready.set()

    async def recv(self) -> VideoFrame:
        while self._frame is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, self._frame = self._frame, None
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a pending recv() so that it raises
