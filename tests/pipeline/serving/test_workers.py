"""Several pipeline workers in one process (`--devices cpu,cpu`): placement, isolation, batching
per worker, load/unload/status across workers, and the app's --devices."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from fractions import Fraction

import httpx
import numpy as np
import pytest

from app import build_service, parse_args
from pipeline import InputFrame, LocalPathPolicy, PipelineService, Stream
from signaling.client import LiveV2VClient, NumberedFrames
from signaling.config import ServerSettings
from tests.conftest import serve_in_thread
from tests.pipelines import RecordingSink
from tests.worker_pipelines import DevicePipeline


def frame(value: int, pts: int, size: int = 16) -> InputFrame:
    image = np.full((size, size, 3), value, np.uint8)
    return InputFrame(decode=lambda: image, pts=pts, time_base=Fraction(1, 90_000),
                      arrived=time.monotonic())


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0,
             feed: Callable[[], None] | None = None) -> None:
    """Wait until `condition()` holds, feeding frames meanwhile (state, not sleeps)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if feed is not None:
            feed()
        time.sleep(0.01)


@pytest.fixture
def two_cpus() -> Iterator[PipelineService]:
    service = PipelineService(devices=["cpu", "cpu"], text_fps=50)
    service.start()
    yield service
    service.stop()


def open_streams(service: PipelineService, count: int) -> tuple[list[Stream], list[RecordingSink]]:
    sinks = [RecordingSink() for _ in range(count)]
    return [service.open_stream(s, offers_video=True) for s in sinks], sinks


def feeder(streams: list[Stream]) -> Callable[[], None]:
    counter = iter(range(1, 10**9))

    def feed() -> None:
        pts = next(counter) * 3000
        for stream in streams:
            stream.push(frame(10, pts))
    return feed


def test_each_worker_loads_its_own_copy_on_its_device(two_cpus: PipelineService) -> None:
    before = len(DevicePipeline.copies)
    status = two_cpus.load_blocking("test-device", {"delay_s": 0})
    assert status.status == "loaded" and status.pipeline_id == "test-device"
    copies = DevicePipeline.copies[before:]
    assert len(copies) == 2 and copies[0] is not copies[1]
    assert [c.assigned_device for c in copies] == ["cpu", "cpu"]
    assert [(w.index, w.device, w.status, w.progress) for w in status.workers] == [
        (0, "cpu", "loaded", 1.0), (1, "cpu", "loaded", 1.0)]


def test_sessions_go_to_the_least_loaded_worker_and_stay(two_cpus: PipelineService) -> None:
    two_cpus.load_blocking("test-device", {"delay_s": 0})
    streams, _ = open_streams(two_cpus, 3)
    assert [s.worker.index for s in streams] == [0, 1, 0]
    streams[0].close()  # worker 0 now has one session, worker 1 one: the lower index wins
    fourth, _ = open_streams(two_cpus, 2)
    assert [s.worker.index for s in fourth] == [0, 1]
    assert [w.sessions for w in two_cpus.status().workers] == [2, 2]
    assert two_cpus.stream_count == 4


def test_batches_form_per_worker(two_cpus: PipelineService) -> None:
    """Four sessions on two workers: a worker batches its own two, never the other's."""
    before = len(DevicePipeline.copies)
    two_cpus.load_blocking("test-device", {"delay_s": 0.05})
    copies = DevicePipeline.copies[before:]
    streams, sinks = open_streams(two_cpus, 4)
    feed = feeder(streams)
    wait_for(lambda: all(2 in c.batches for c in copies) and all(s.frames for s in sinks),
             "a batch of two on each worker", feed=feed)
    assert all(size <= 2 for c in copies for size in c.batches)
    assert not any(s.stopped for s in sinks)
    assert all(w.fps_out > 0 for w in two_cpus.status().workers)


def test_a_failing_worker_stops_only_its_own_sessions(two_cpus: PipelineService) -> None:
    """The broken copy is found through its worker's engine: the copies are made by the two
    workers' loader threads at once, so their order in `DevicePipeline.copies` is not the
    workers' (taking it for theirs broke the other worker's sessions and waited forever)."""
    two_cpus.load_blocking("test-device", {"delay_s": 0})
    streams, sinks = open_streams(two_cpus, 4)
    feed = feeder(streams)
    wait_for(lambda: all(s.frames for s in sinks), "frames on every session", feed=feed)
    broken = streams[1].worker.index
    copy = two_cpus.workers[broken].engine.pipeline  # type: ignore[attr-defined]
    assert isinstance(copy, DevicePipeline)
    copy.fail = "CUDA error: device-side assert"
    doomed = [sink for stream, sink in zip(streams, sinks, strict=True)
              if stream.worker.index == broken]
    healthy = [sink for stream, sink in zip(streams, sinks, strict=True)
               if stream.worker.index != broken]
    wait_for(lambda: all(s.stopped for s in doomed), "the broken worker's sessions to stop",
             feed=feed)
    assert all("device-side assert" in s.stopped[0] for s in doomed)
    counts = [len(s.frames) for s in healthy]
    wait_for(lambda: all(len(s.frames) > n + 3 for s, n in zip(healthy, counts, strict=True)),
             "the other worker's sessions to carry on", feed=feed)
    assert not any(s.stopped for s in healthy)


def test_a_load_that_fails_on_one_worker_leaves_the_other_serving() -> None:
    """Only worker 1's device fails (here both are 'cpu', so the failure names the index the
    test gives the second worker): its error is in its status; the overall state is loaded."""
    service = PipelineService(devices=["cpu", "cpu:1"], text_fps=50)
    service.start()
    try:
        status = service.load_blocking("test-device", {"fail_load_on": "cpu:1"})
        assert status.status == "loaded" and status.error is None
        assert [w.status for w in status.workers] == ["loaded", "error"]
        assert "out of memory on cpu:1" in (status.workers[1].error or "")
        streams, sinks = open_streams(service, 2)
        assert [s.worker.index for s in streams] == [0, 0]  # only the live worker takes sessions
        feed = feeder(streams)
        wait_for(lambda: all(s.frames for s in sinks), "frames from the live worker", feed=feed)
        service.unload()
        status = service.status()
        assert status.status == "not_loaded" and all(s.stopped for s in sinks)
        assert [w.status for w in status.workers] == ["not_loaded", "not_loaded"]
    finally:
        service.stop()


def test_load_failing_everywhere_is_an_error() -> None:
    service = PipelineService(devices=["cpu:0", "cpu:0"])
    service.start()
    try:
        status = service.load_blocking("test-device", {"fail_load_on": "cpu:0"})
        assert status.status == "error"
        assert "2 of 2 workers failed" in (status.error or "")
        assert "out of memory on cpu:0" in (status.error or "")
    finally:
        service.stop()


def test_devices_option_reaches_the_status_route() -> None:
    assert parse_args(["--devices", "cuda:0,cuda:1"]).devices == ["cuda:0", "cuda:1"]
    assert parse_args([]).devices is None
    with pytest.raises(ValueError, match="--devices is for --backend local"):
        build_service(ServerSettings(devices=["cpu"], backend="ray"), LocalPathPolicy())
    with serve_in_thread(pipeline="test-device", devices=["cpu", "cpu"]) as server:
        status = httpx.get(f"{server.url}/api/v1/pipeline/status", timeout=10).json()
        assert status["status"] == "loaded" and status["pipeline_id"] == "test-device"
        assert [(w["index"], w["device"], w["status"]) for w in status["workers"]] == [
            (0, "cpu", "loaded"), (1, "cpu", "loaded")]
        # The session limit counts both workers (the pipeline's per-worker figure, twice).
        assert server.app.state.sessions.max_sessions == 2 * DevicePipeline.max_sessions


async def test_session_ids_name_their_front() -> None:
    """--front-id: a load balancer can route PATCH/DELETE on the id's prefix."""
    assert parse_args(["--front-id", "front2"]).front_id == "front2"
    with serve_in_thread(pipeline="passthrough", front_id="front2") as server:
        async with LiveV2VClient(server.url) as client:
            answer = await client.connect(NumberedFrames(size=64, fps=20))
            assert answer["sessionId"].startswith("front2-")
            await client.recv(timeout_s=30)
            response = await client.patch_candidates(
                [{"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0",
                  "sdpMLineIndex": 0}])
            assert response.status_code == 204
            assert await client.stop() == 204
