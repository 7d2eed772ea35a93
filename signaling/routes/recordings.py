"""Server-side recording of a session's output: start, stop, download as an MP4."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from ..recording import Recording, RecordingError, RecordingInfo
from ..session import Session
from .context import ApiContext


class _SendOnce(FileResponse):
    """A file response that deletes its file after sending, even if the client goes away
    mid-download (a background task would then be skipped)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await asyncio.to_thread(Path(self.path).unlink, missing_ok=True)


NodeId = Query(default=None, max_length=200,
               description="Scope's record node; accepted and ignored (one output per session).")


def router(ctx: ApiContext) -> APIRouter:
    api = APIRouter(prefix="/recordings", tags=["recordings"])

    def live_session(session_id: str) -> Session:
        session = ctx.sessions.get(session_id)
        if session is None or session.closed.is_set():
            raise HTTPException(404, f"Session {session_id!r} not found or closed.")
        return session

    def recording_of(session: Session) -> Recording:
        if session.recording is None:
            raise HTTPException(404, "This session has no recording; start one with "
                                     f"POST /api/v1/recordings/{session.id}/start.")
        return session.recording

    @api.post("/{session_id}/start", response_model=RecordingInfo, responses={404: {}, 500: {}})
    async def start(session_id: str, node_id: str | None = NodeId) -> RecordingInfo:
        """Record what the session sends from now on (idempotent while recording)."""
        session = live_session(session_id)
        try:
            return session.start_recording().info()
        except RecordingError as exc:
            raise HTTPException(500, str(exc)) from None

    @api.post("/{session_id}/stop", response_model=RecordingInfo, responses={404: {}})
    async def stop(session_id: str, node_id: str | None = NodeId) -> RecordingInfo:
        """Finish the file; download it with GET. Idempotent."""
        recording = recording_of(live_session(session_id))
        await asyncio.to_thread(recording.stop, "stopped by request")
        return recording.info()

    @api.get("/{session_id}", response_class=FileResponse,
             responses={200: {"content": {"video/mp4": {}}, "description": "The MP4 (H.264)"},
                        404: {}})
    async def download(session_id: str, node_id: str | None = NodeId) -> FileResponse:
        """The recording as an MP4 (stopping it first if it runs). The file is deleted once
        sent: a second GET is 404."""
        session = live_session(session_id)
        recording = recording_of(session)
        await asyncio.to_thread(recording.stop, "downloaded")
        if recording.frames == 0:
            raise HTTPException(404, "The recording holds no frames (nothing was sent while it "
                                     "ran).")
        if session.take_recording() is not recording:  # a concurrent download took it
            raise HTTPException(404, "This recording was already downloaded.")
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        return _SendOnce(recording.path, media_type="video/mp4",
                         filename=f"recording-{stamp}.mp4")

    return api
