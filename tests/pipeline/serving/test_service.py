"""The shared pipeline service: load state machine, worker, slots, batching, faults."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import (
    InputFrame,
    LoadingError,
    LoadInProgressError,
    NotLoadedError,
    ParameterUpdate,
    PipelineService,
    UnknownPipelineError,
    UnsupportedModeError,
)
from tests.pipelines import ChunkPipeline, GatedLoadPipeline, InvertPipeline, RecordingSink


def frame(value: int, pts: int = 0, size: int = 16) -> InputFrame:
    image = np.full((size, size, 3), value, np.uint8)
    return InputFrame(decode=lambda: image, pts=pts, time_base=Fraction(1, 90_000),
                      arrived=time.monotonic())


def test_load_reports_loading_before_returning_then_progress_then_loaded(
        service: PipelineService) -> None:
    GatedLoadPipeline.gate.clear()
    GatedLoadPipeline.fail = False
    service.load("test-gated", {"height": 128})
    assert service.status().status == "loading"
    deadline = time.monotonic() + 5
    while service.status().loading_stage != "waiting for the gate" and time.monotonic() < deadline:
        time.sleep(0.01)
    status = service.status()
    assert (status.progress, status.loading_stage) == (0.5, "waiting for the gate")
    with pytest.raises(LoadingError):
        service.open_stream(RecordingSink(), offers_video=True)
    with pytest.raises(LoadInProgressError):
        service.load("passthrough")
    service.load("test-gated", {"height": 128})  # the same load joins the running one
    GatedLoadPipeline.gate.set()
    deadline = time.monotonic() + 5
    while service.status().status == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    status = service.status()
    assert status.status == "loaded" and status.load_params["height"] == 128


def test_failed_load_keeps_the_reason_and_stops_streams(service: PipelineService) -> None:
    service.load_blocking("passthrough")
    sink = RecordingSink()
    service.open_stream(sink, offers_video=True)
    GatedLoadPipeline.gate.set()
    GatedLoadPipeline.fail = True
    try:
        status = service.load_blocking("test-gated", timeout=10)
    finally:
        GatedLoadPipeline.fail = False
    assert status.status == "error"
    assert status.error == "weights not found: pass a local folder"
    assert sink.stopped and "weights not found" in sink.stopped[0]
    with pytest.raises(NotLoadedError):
        service.open_stream(RecordingSink(), offers_video=True)


def test_load_validates_id_and_params(service: PipelineService) -> None:
    with pytest.raises(UnknownPipelineError):
        service.load("no-such-pipeline")
    with pytest.raises(ValidationError):
        service.load("passthrough", {"height": 100000})
    with pytest.raises(ValidationError):
        service.load("passthrough", {"width": "wide"})
    assert service.status().status == "not_loaded"


def test_base_seed_is_an_alias_of_seed(service: PipelineService) -> None:
    assert service.load_blocking("passthrough", {"base_seed": 9}).load_params["seed"] == 9


def test_frames_go_through_and_keep_their_timestamps(service: PipelineService) -> None:
    service.load_blocking("test-invert")
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    stream.push(frame(10, pts=1234))
    sink.wait(1)
    out = sink.frames[0]
    assert out.pts == 1234
    assert np.all(out.image == 245)
    assert stream.stats.snapshot()["frames_out"] == 1


def test_latest_frame_wins_when_the_pipeline_is_slow(service: PipelineService) -> None:
    service.load_blocking("test-invert")
    InvertPipeline.delay_s = 0.2
    try:
        sink = RecordingSink()
        stream = service.open_stream(sink, offers_video=True)
        stream.push(frame(1, pts=1))
        assert InvertPipeline.busy.wait(5)  # the worker is busy with frame 1
        for i in range(2, 7):
            stream.push(frame(i, pts=i))
        sink.wait(2, timeout=3)
    finally:
        InvertPipeline.delay_s = 0.0
    assert [f.pts for f in sink.frames] == [1, 6]
    assert stream.stats.snapshot()["frames_dropped"] == 4


def test_ready_sessions_are_batched_into_one_call(service: PipelineService) -> None:
    service.load_blocking("test-invert")
    InvertPipeline.delay_s = 0.2
    sinks = [RecordingSink() for _ in range(4)]
    streams = [service.open_stream(s, offers_video=True) for s in sinks]
    try:
        streams[0].push(frame(0))
        assert InvertPipeline.busy.wait(5)  # while it is busy, the other three become ready
        InvertPipeline.batches.clear()
        for st in streams[1:]:
            st.push(frame(0))
        for s in sinks:
            s.wait(1)
    finally:
        InvertPipeline.delay_s = 0.0
    assert InvertPipeline.batches[:1] == [3]
    assert all(len(s.frames) == 1 for s in sinks)


def test_a_failing_pipeline_stops_only_the_affected_session(service: PipelineService) -> None:
    service.load_blocking("test-faulty")
    bad, good = RecordingSink(), RecordingSink()
    bad_stream = service.open_stream(bad, offers_video=True,
                                     initial=ParameterUpdate.model_validate(
                                         {"prompts": [{"text": "boom"}]}))
    good_stream = service.open_stream(good, offers_video=True)
    bad_stream.push(frame(1))
    bad.wait()
    assert bad.stopped and "boom: the model exploded" in bad.stopped[0]
    good_stream.push(frame(2))
    good.wait()
    assert len(good.frames) == 1 and not good.stopped
    assert service.stream_count == 1


def test_a_pipeline_that_would_end_the_worker_thread_does_not(
        service: PipelineService) -> None:
    service.load_blocking("test-faulty")
    doomed, later = RecordingSink(), RecordingSink()
    stream = service.open_stream(doomed, offers_video=True, initial=ParameterUpdate.model_validate(
        {"prompts": [{"text": "die"}]}))
    stream.push(frame(1))
    doomed.wait()
    assert doomed.stopped and "SystemExit" in doomed.stopped[0]
    thread = service.workers[0]._thread
    assert thread is not None and thread.is_alive()
    service.open_stream(later, offers_video=True).push(frame(2))
    later.wait()
    assert len(later.frames) == 1


def test_text_mode_generates_frames_on_a_steady_clock(service: PipelineService) -> None:
    service.load_blocking("cpu-effect", {"height": 64, "width": 96})
    sink = RecordingSink()
    service.open_stream(sink, offers_video=False)
    sink.wait(5)
    assert len(sink.frames) >= 5
    assert sink.frames[0].image.shape == (64, 96, 3)
    pts = [f.pts for f in sink.frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert not np.array_equal(sink.frames[0].image, sink.frames[4].image)  # it moves


def test_video_only_pipeline_refuses_text_sessions(service: PipelineService) -> None:
    service.load_blocking("passthrough")
    with pytest.raises(UnsupportedModeError):
        service.open_stream(RecordingSink(), offers_video=False)
    with pytest.raises(UnsupportedModeError):
        service.open_stream(RecordingSink(), offers_video=True,
                            initial=ParameterUpdate(input_mode="text"))


def test_paused_repeats_the_last_frame(service: PipelineService) -> None:
    service.load_blocking("test-invert")
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    stream.push(frame(10, pts=1))
    sink.wait(1)
    stream.update(ParameterUpdate(paused=True))
    stream.push(frame(99, pts=2))
    sink.wait(2)
    assert sink.frames[1].pts == 2 and np.all(sink.frames[1].image == 245)
    stream.update(ParameterUpdate(paused=False))
    stream.push(frame(99, pts=3))
    sink.wait(3)
    assert np.all(sink.frames[2].image == 156)


def test_closed_streams_leave_the_service(service: PipelineService) -> None:
    service.load_blocking("passthrough")
    streams = [service.open_stream(RecordingSink(), offers_video=True) for _ in range(3)]
    for st in streams:
        st.close()
    assert service.stream_count == 0


def test_stop_joins_the_worker() -> None:
    svc = PipelineService()
    svc.start()
    svc.load_blocking("passthrough")
    svc.stop(timeout=5)
    assert not any(t.name.startswith("pipeline-worker") and t.is_alive()
                   for t in threading.enumerate())


def test_unload_frees_the_pipeline_and_stops_its_sessions(service: PipelineService) -> None:
    service.load_blocking("test-invert")
    sink = RecordingSink()
    service.open_stream(sink, offers_video=True)
    pipeline = service.workers[0].engine.pipeline
    service.unload()
    assert sink.stopped == ["The pipeline was unloaded."]
    assert service.status().status == "not_loaded"
    assert service.workers[0].engine.pipeline is None
    assert pipeline is not None
    with pytest.raises(NotLoadedError):
        service.open_stream(RecordingSink(), offers_video=True)
    assert service.load_blocking("passthrough").status == "loaded"


# --- chunk-aware pipelines (video models) ------------------------------------------------------

def test_a_chunk_pipeline_gets_its_frames_per_call_and_each_output_keeps_its_input_stamp(
        service: PipelineService) -> None:
    service.load_blocking("test-chunk")
    ChunkPipeline.calls.clear()
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    for i in range(4):  # the first call takes CHUNK + 1 frames
        stream.push(frame(i, pts=100 + i))
    sink.wait(4)
    for i in range(4, 7):
        stream.push(frame(i, pts=100 + i))
    sink.wait(7)
    assert ChunkPipeline.calls == [[4], [3]]
    assert sink.calls == [4, 3]  # handed over as chunks, to be paced by the transport
    assert [f.pts for f in sink.frames] == list(range(100, 107))
    assert [int(f.image[0, 0, 0]) for f in sink.frames] == [255 - i for i in range(7)]
    stats = stream.stats.snapshot()
    assert stats["frames_out"] == 7 and stats["chunk_frames"] == 3
    assert stats["frames_dropped"] == 0 and stats["chunk_wait_ms"] is not None


def test_a_slow_chunk_pipeline_takes_the_latest_frames_and_counts_the_rest_as_drops(
        service: PipelineService) -> None:
    service.load_blocking("test-chunk")
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    ChunkPipeline.gate.clear()
    try:
        for i in range(4):
            stream.push(frame(i, pts=i))
        assert ChunkPipeline.busy.wait(10)  # the model is busy: input outruns it
        for i in range(4, 14):
            stream.push(frame(i, pts=i))
    finally:
        ChunkPipeline.gate.set()
    sink.wait(7)
    assert [f.pts for f in sink.frames] == [0, 1, 2, 3, 11, 12, 13]  # then the newest window
    assert stream.stats.snapshot()["frames_dropped"] == 7


def test_reset_cache_makes_the_next_chunk_a_first_chunk_again(service: PipelineService) -> None:
    service.load_blocking("test-chunk")
    ChunkPipeline.calls.clear()
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    for i in range(4):
        stream.push(frame(i, pts=i))
    sink.wait(4)
    for i in range(4, 7):
        stream.push(frame(i, pts=i))
    sink.wait(7)
    stream.update(ParameterUpdate(reset_cache=True))
    for i in range(7, 11):
        stream.push(frame(i, pts=i))
    sink.wait(11)
    assert ChunkPipeline.calls == [[4], [3], [4]]


def test_text_mode_chunks_are_stamped_at_the_text_rate(service: PipelineService) -> None:
    service.load_blocking("test-chunk", {"height": 64, "width": 64})
    sink = RecordingSink()
    service.open_stream(sink, offers_video=False)
    sink.wait(6)
    pts = [f.pts for f in sink.frames[:6]]
    step = round(90_000 / service.text_fps)
    # within a chunk, frames are one text-frame interval apart; chunks follow on, never overlap
    assert pts[1] - pts[0] == pts[2] - pts[1] == step
    assert pts[3] >= pts[2] + step
    assert [int(f.image[0, 0, 0]) for f in sink.frames[:6]] == [1, 1, 1, 2, 2, 2]


def test_a_pipeline_returning_an_empty_chunk_stops_the_session_with_the_reason(
        service: PipelineService) -> None:
    service.load_blocking("test-chunk", {"height": 64, "width": 64})
    bad = RecordingSink()
    ChunkPipeline.CHUNK = 0  # text mode now returns a chunk of no frames
    try:
        service.open_stream(bad, offers_video=False)
        bad.wait()
    finally:
        ChunkPipeline.CHUNK = 3
    assert bad.stopped and "T×H×W×3" in bad.stopped[0] and not bad.frames
    assert service.stream_count == 0
