"""Server-side recording: real aiortc sessions record their output to an H.264 MP4 that PyAV
plays back; bounds, cleanup, the `recording` channel key, and 404s."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from av import VideoFrame

from signaling.client import LiveV2VClient, NumberedFrames
from signaling.recording import Recording, RecordingLimits
from signaling.session import Session
from tests.conftest import Server, serve_in_thread


@pytest.fixture
def rec_dir(tmp_path: Path) -> Path:
    path = tmp_path / "recordings"
    path.mkdir()
    return path


@pytest.fixture
def server(rec_dir: Path) -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough", recording={"directory": rec_dir}) as srv:
        yield srv


async def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def session_of(server: Server, session_id: str) -> Session:
    return server.app.state.sessions.get(session_id)


async def test_a_session_records_to_a_playable_mp4(server: Server, rec_dir: Path,
                                                   tmp_path: Path) -> None:
    async with LiveV2VClient(server.url) as client:
        await client.connect(NumberedFrames(size=128, fps=20))
        await client.recv()
        base = f"/api/v1/recordings/{client.session_id}"
        r = await client.http.post(f"{base}/start", params={"node_id": "record"})
        assert r.status_code == 200 and r.json()["status"] == "recording", r.text
        recording = session_of(server, client.session_id).recording
        for _ in range(10):  # frames the server sends while recording
            await client.recv()
        await wait_for(lambda: recording.info().frames >= 5)
        r = await client.http.post(f"{base}/stop")
        stopped = r.json()
        assert r.status_code == 200 and stopped["status"] == "stopped"
        assert stopped["frames"] >= 5 and (stopped["width"], stopped["height"]) == (128, 128)
        assert stopped["stopped_reason"] == "stopped by request"

        r = await client.http.get(base, params={"node_id": "record"})
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        assert "attachment" in r.headers["content-disposition"]
        video = tmp_path / "out.mp4"
        video.write_bytes(r.content)
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == stopped["frames"]
        assert frames[0].shape == (128, 128, 3)
        assert frames[-1].mean() > 5  # a picture, not a black frame

        await wait_for(lambda: not any(rec_dir.iterdir()))  # deleted after the download
        again = await client.http.get(base)
        assert again.status_code == 404 and "no recording" in again.json()["detail"]


async def test_channel_key_starts_and_stops_and_the_file_goes_with_the_session(
        server: Server, rec_dir: Path) -> None:
    async with LiveV2VClient(server.url) as client:
        await client.connect(NumberedFrames(size=96, fps=20))
        await client.recv()
        session = session_of(server, client.session_id)
        await client.send({"recording": True})
        await wait_for(lambda: session.recording is not None
                       and session.recording.info().frames >= 3)
        assert "recording" not in session.stream.effective_parameters()  # not a pipeline key
        await client.send({"recording": False})
        await wait_for(lambda: not session.recording.recording)
        assert session.recording.info().stopped_reason == "stopped by the client"
        assert len(os.listdir(rec_dir)) == 1
        await client.send({"recording": True})  # a new recording replaces the old file
        await wait_for(lambda: session.recording.recording
                       and session.recording.info().frames >= 1)
        await wait_for(lambda: len(list(rec_dir.iterdir())) == 1)
        assert await client.stop() == 204
    await wait_for(lambda: not any(rec_dir.iterdir()))  # removed when the session ended


async def test_initial_parameters_record_and_limits_stop_the_recording(rec_dir: Path) -> None:
    limits = {"directory": rec_dir, "max_seconds": 0.5}
    with serve_in_thread(pipeline="passthrough", recording=limits) as server:
        async with LiveV2VClient(server.url) as client:
            await client.connect(NumberedFrames(size=64, fps=20), initial={"recording": True})
            recording = session_of(server, client.session_id).recording
            assert recording is not None
            await wait_for(lambda: not recording.recording)
            info = recording.info()
            assert info.stopped_reason == "duration limit reached (0.5 s)"
            assert info.frames >= 1 and info.duration_s <= 0.5
            r = await client.http.get(f"/api/v1/recordings/{client.session_id}")
            assert r.status_code == 200 and r.content[4:8] == b"ftyp"  # an MP4


def test_the_size_limit_stops_a_recording(rec_dir: Path) -> None:
    recording = Recording("size", RecordingLimits(directory=rec_dir, max_bytes=2048))
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    deadline = time.monotonic() + 60
    while recording.recording:  # incompressible frames pass 2 KiB at once
        assert time.monotonic() < deadline
        recording.offer(VideoFrame.from_ndarray(noise, format="rgb24"))
        time.sleep(0.01)
    info = recording.info()
    assert info.stopped_reason == "size limit reached (2048 bytes)" and info.size_bytes >= 2048
    recording.discard()
    assert not recording.path.exists()


def test_a_slow_recorder_drops_frames_instead_of_blocking(rec_dir: Path) -> None:
    recording = Recording("burst", RecordingLimits(directory=rec_dir))
    frame = VideoFrame.from_ndarray(np.full((480, 640, 3), 200, np.uint8), format="rgb24")
    for _ in range(300):  # far faster than any encoder: the queue fills, offers return
        recording.offer(frame)
    recording.stop()
    info = recording.info()
    assert info.dropped_frames > 0 and info.frames + info.dropped_frames == 300
    assert info.frames >= 1
    recording.discard()


def test_unknown_sessions_and_missing_recordings_are_404(server: Server) -> None:
    url = f"{server.url}/api/v1/recordings"
    for method, path in [("POST", "/nope/start"), ("POST", "/nope/stop"), ("GET", "/nope"),
                         ("POST", "/../../etc/start"), ("GET", "/%2e%2e%2fetc")]:
        r = httpx.request(method, url + path, timeout=10)
        assert r.status_code == 404 and "detail" in r.json(), (method, path, r.text)
    r = httpx.post(f"{url}/x/start", params={"node_id": "n" * 500}, timeout=10)
    assert r.status_code == 422


def test_odd_and_changing_frame_sizes_still_make_a_playable_file(rec_dir: Path) -> None:
    """yuv420p needs even sizes; a pipeline reload may change the size mid-recording."""
    recording = Recording("sizes", RecordingLimits(directory=rec_dir))
    for shape in [(47, 63)] * 3 + [(128, 96)] * 3:  # 6 frames: the queue holds them all
        recording.offer(VideoFrame.from_ndarray(np.full((*shape, 3), 120, np.uint8),
                                                format="rgb24"))
    recording.stop()
    assert recording.info().frames == 6
    with av.open(str(recording.path)) as container:
        sizes = {(f.width, f.height) for f in container.decode(video=0)}
    assert sizes == {(62, 46)}
    recording.discard()


def test_frames_passed_through_are_recorded_without_being_restamped(rec_dir: Path) -> None:
    """A passed-through frame is the WebRTC encoder's too: the recording must not touch it."""
    frames = []
    for i in range(5):
        frame = VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8),
                                        format="rgb24").reformat(format="yuv420p")
        frame.pts, frame.time_base = 4500 * (100 + i), Fraction(1, 90_000)
        frames.append(frame)
    recording = Recording("passed", RecordingLimits(directory=rec_dir))
    try:
        for frame in frames:
            recording.offer(frame)
        deadline = time.monotonic() + 30
        while recording.info().frames < len(frames):
            assert time.monotonic() < deadline and recording.error is None, recording.error
            time.sleep(0.05)
    finally:
        recording.discard()
    assert [(f.pts, f.time_base) for f in frames] == [
        (4500 * (100 + i), Fraction(1, 90_000)) for i in range(5)]
