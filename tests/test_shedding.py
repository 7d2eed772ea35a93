"""Load shedding: received frames never wait for the event loop, stale ones are dropped (and
counted) instead of queued, passthrough sends the decoded frames back untouched, and the
encoder threads yield the CPU. Every test waits on state; speed lives in
benchmarks/transport.py."""

from __future__ import annotations

import asyncio
import fractions
import gc
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import ClassVar

import aiortc.rtcrtpreceiver
import numpy as np
import pytest
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from av import VideoFrame

from pipeline import FrameRequest, InputFrame, ParameterUpdate, Pipeline, PipelineService
from pipeline.registry import register
from signaling.client import LiveV2VClient, NumberedFrames, draw_number, read_frame_number
from signaling.encoder import LiveVp8Encoder, encode_at_low_priority
from signaling.priority import SHEDDABLE_NICENESS, lower_this_thread
from signaling.receiving import deliver_directly, weak_consumer
from tests.conftest import serve_in_thread
from tests.pipelines import RecordingSink

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="thread priorities: Linux only")


@register
class StuckPipeline(Pipeline):
    """Returns its input; `process` waits for `gate` (a pipeline that cannot keep up)."""

    id = "test-stuck"
    name = description = "test: stuck until the gate opens"
    gate: ClassVar[threading.Event] = threading.Event()
    busy: ClassVar[threading.Event] = threading.Event()

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        self.busy.set()
        self.gate.wait(60)
        return [r.frame for r in batch]


def encoded_numbers(count: int, size: int = 64) -> list[JitterFrame]:
    encoder = LiveVp8Encoder()
    frames = []
    for n in range(count):
        video = VideoFrame.from_ndarray(draw_number(n, size), format="rgb24")
        video.pts, video.time_base = n * 4500, fractions.Fraction(1, 90000)
        payloads, timestamp = encoder.encode(video)
        frames.append(JitterFrame(data=b"".join(vp8_depayload(p) for p in payloads),
                                  timestamp=timestamp))
    return frames


def test_decoded_frames_reach_their_consumer_on_the_decoder_thread_not_the_loop() -> None:
    loop = asyncio.new_event_loop()  # never run while decoding: frames must not need it
    try:
        track = RemoteStreamTrack(kind="video")
        got: list[tuple[int, int]] = []
        assert deliver_directly(track, lambda f: got.append((read_frame_number(f),
                                                             threading.get_ident())))
        encoded: queue.Queue = queue.Queue()
        for frame in encoded_numbers(20):
            encoded.put((VP8, frame))
        encoded.put(None)  # the receiver stops
        decoder = threading.Thread(target=aiortc.rtcrtpreceiver.decoder_worker,
                                   args=(loop, encoded, track._queue, threading.Event()))
        decoder.start()
        decoder.join(60)
        assert [n for n, _ in got] == list(range(20))
        assert {thread for _, thread in got} == {decoder.ident}
        with pytest.raises(MediaStreamError):  # the end of the stream still ends the track
            loop.run_until_complete(asyncio.wait_for(track.recv(), 30))
        assert track.readyState == "ended"
    finally:
        loop.close()


def test_a_track_not_received_by_aiortc_is_read_as_usual() -> None:
    assert not deliver_directly(NumberedFrames(size=64), lambda f: None)


def test_passthrough_sends_the_transport_frames_back_untouched(service: PipelineService) -> None:
    service.load_blocking("passthrough")
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    native = object()  # what the transport decoded; the pipeline side never looks inside

    def no_conversion() -> np.ndarray:
        raise AssertionError("passthrough converted a frame to RGB")

    stream.push(InputFrame(decode=no_conversion, native=native, pts=1234,
                           time_base=fractions.Fraction(1, 90_000), arrived=time.monotonic()))
    sink.wait(1)
    assert not sink.stopped
    assert sink.frames[0].image is native and sink.frames[0].pts == 1234
    stream.update(ParameterUpdate(paused=True))  # paused: the last frame again, at input pace
    stream.push(InputFrame(decode=no_conversion, native=object(), pts=1235,
                           time_base=fractions.Fraction(1, 90_000), arrived=time.monotonic()))
    sink.wait(2)
    assert sink.frames[1].image is native and sink.frames[1].pts == 1235


def test_passthrough_without_the_transport_frame_still_works_in_rgb(
        service: PipelineService) -> None:
    service.load_blocking("passthrough")
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    image = np.full((16, 16, 3), 7, np.uint8)
    stream.push(InputFrame(decode=lambda: image, pts=5, time_base=fractions.Fraction(1, 90_000),
                           arrived=time.monotonic()))
    sink.wait(1)
    assert np.array_equal(sink.frames[0].image, image)


@linux_only
def test_encoders_run_on_threads_that_yield_the_cpu_and_lower_only_once() -> None:
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def niceness_after_two_calls() -> int:
        lower_this_thread()
        lower_this_thread()  # once per thread, not once per call
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def on_default_executor() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        encode_at_low_priority(loop)
        own = await loop.run_in_executor(
            None, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return own, await loop.run_in_executor(None, niceness_after_two_calls)

    own, twice = asyncio.run(on_default_executor())
    assert own == twice == min(19, base + SHEDDABLE_NICENESS)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


async def test_a_stuck_pipeline_sheds_stale_frames_and_a_fresh_session_still_connects() -> None:
    StuckPipeline.gate.clear()
    StuckPipeline.busy.clear()
    try:
        with serve_in_thread(pipeline="test-stuck") as server:
            source = NumberedFrames(size=64, fps=30)
            async with LiveV2VClient(server.url) as first:
                await first.connect(source)
                assert await asyncio.to_thread(StuckPipeline.busy.wait, 30)
                stuck_at = len(source.sent)  # the frame being processed is older than this
                stats = await first.message("stats", timeout_s=30)
                while stats["frames_dropped"] < 10:  # frames kept coming: dropped, not queued
                    stats = await first.message("stats", timeout_s=30)
                async with LiveV2VClient(server.url) as fresh:
                    await fresh.connect(NumberedFrames(size=64, fps=30))
                    await fresh.wait_open(30)  # connected while the pipeline is stuck
                    StuckPipeline.gate.set()
                    held = read_frame_number(await first.recv(timeout_s=30))
                    after = read_frame_number(await first.recv(timeout_s=30))
                    assert held < stuck_at
                    assert after >= held + 10  # the newest frame next, not the backlog
                    await fresh.recv(timeout_s=30)
    finally:
        StuckPipeline.gate.set()


def test_a_session_is_not_kept_alive_by_its_frame_consumer() -> None:
    class Owner:
        def on_frame(self, frame: VideoFrame) -> None: ...

    owner = Owner()
    track = RemoteStreamTrack(kind="video")
    assert deliver_directly(track, weak_consumer(owner.on_frame))
    gone = weakref.ref(owner)
    del owner
    gc.collect()
    assert gone() is None
