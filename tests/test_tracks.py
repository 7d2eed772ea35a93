"""The outgoing track: chunks are paced at their timestamps, single frames stay latest-wins.

Only lower bounds on time are asserted (a frame never leaves before its turn): a busy machine can
make frames late, never early."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from signaling.tracks import PipelineTrack

TIME_BASE = Fraction(1, 90_000)
STEP = 4_500  # 50 ms at 90 kHz: 20 fps


def video(pts: int) -> VideoFrame:
    frame = VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = pts, TIME_BASE
    return frame


async def test_a_chunk_leaves_at_the_spacing_of_its_timestamps_not_as_a_burst() -> None:
    track = PipelineTrack()
    loop = asyncio.get_running_loop()
    track.deliver([video(i * STEP) for i in range(4)])
    released = []
    for _ in range(4):
        frame = await track.recv()
        released.append((frame.pts, loop.time()))
    assert [pts for pts, _ in released] == [0, STEP, 2 * STEP, 3 * STEP]
    first = released[0][1]
    for i, (_, at) in enumerate(released):
        assert at - first >= i * 0.05 - 0.002  # never early (loop.time() granularity)
    assert track.dropped == 0
    track.stop()


async def test_the_next_chunk_follows_on_from_the_one_still_playing() -> None:
    track = PipelineTrack()
    loop = asyncio.get_running_loop()
    track.deliver([video(i * STEP) for i in range(3)])
    first = (await track.recv(), loop.time())[1]
    track.deliver([video(i * STEP) for i in range(3, 6)])  # arrives while 2 frames are queued
    times = [first]
    for _ in range(5):
        await track.recv()
        times.append(loop.time())
    for i, at in enumerate(times):
        assert at - first >= i * 0.05 - 0.002
    track.stop()


async def test_single_frames_are_latest_wins_and_leave_at_once() -> None:
    track = PipelineTrack()
    for i in range(3):
        track.deliver([video(i * STEP)])
    frame = await asyncio.wait_for(track.recv(), 1)  # no pacing wait for a single frame
    assert frame.pts == 2 * STEP and track.dropped == 2
    track.stop()


async def test_a_backlog_beyond_two_chunks_is_dropped_oldest_first() -> None:
    track = PipelineTrack()
    for c in range(3):
        track.deliver([video((c * 4 + i) * STEP) for i in range(4)])
    assert track.queued == 8 and track.dropped == 4
    assert track._queue[0][1] <= asyncio.get_running_loop().time()  # shed the wait too
    assert (await track.recv()).pts == 4 * STEP
    track.stop()


async def test_stop_wakes_a_waiting_receiver() -> None:
    track = PipelineTrack()
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    track.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 5)
