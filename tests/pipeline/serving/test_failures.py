"""When a pipeline call fails, every session in it is stopped: once, at once, with nothing after.

`test-flaky` (tests/worker_pipelines.py) fails calls at random — raising, returning a wrong
count or a malformed output, or failing a session's `new_state` — and records which sessions
(by the value of their frames) were in each failed call. Sessions stream through two workers in
batches split over several calls; a stopped session is replaced at once (sessions attach while
failures are handled); a busy process spins on one core meanwhile. The same guarantee through a
Ray actor is in test_ray.py. `bash scripts/test.sh --repeat 50 tests/pipeline/serving/
test_failures.py` runs it 50 times in a row."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction

import numpy as np
import pytest

from pipeline import InputFrame, OutputFrame, PipelineService, Stream
from tests.worker_pipelines import FlakyPipeline

STOP_WITHIN_S = 1.0
"""The service's promise: the stop notice follows the failed call within this (same thread)."""
EXPECTED = {"raise": "injected raise", "count": "outputs for", "dtype": "must return",
            "new_state": "injected new_state"}


class EventSink:
    """Records, in order, what the worker hands a session: frames, then at most one stop."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def on_frames(self, frames: Sequence[OutputFrame]) -> None:
        with self._lock:
            self.events.append(("frames", str(len(frames)), time.time()))

    def on_stopped(self, message: str) -> None:
        with self._lock:
            self.events.append(("stopped", message, time.time()))

    @property
    def stops(self) -> list[tuple[str, float]]:
        with self._lock:
            return [(m, t) for kind, m, t in self.events if kind == "stopped"]

    def frames_after_stop(self) -> int:
        with self._lock:
            kinds = [kind for kind, _, _ in self.events]
        if "stopped" not in kinds:
            return 0
        return kinds[kinds.index("stopped"):].count("frames")


def frame(value: int, pts: int) -> InputFrame:
    image = np.full((8, 8, 3), value, np.uint8)
    return InputFrame(decode=lambda: image, pts=pts, time_base=Fraction(1, 90_000),
                      arrived=time.monotonic())


@pytest.fixture
def busy_core() -> Iterator[None]:
    """A process spinning on one core, so the worker threads get preempted at odd points."""
    spin = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    yield
    proc.kill()
    proc.wait()


def check_guarantee(sinks: dict[int, EventSink],
                    failures: list[tuple[str, float, list[int]]]) -> None:
    """Every session of a failed call stopped once with its reason, soon; none got frames after
    its stop; no session was stopped without a failure that explains it."""
    failed_in: dict[int, tuple[str, float]] = {}
    for kind, at, values in failures:
        for value in values:
            assert value not in failed_in, f"session {value} was in a call after it failed"
            failed_in[value] = (kind, at)
    for value, sink in sinks.items():
        stops = sink.stops
        assert len(stops) <= 1, f"session {value} was stopped {len(stops)} times: {stops}"
        assert sink.frames_after_stop() == 0, f"session {value} got frames after its stop"
        if value in failed_in:
            kind, at = failed_in[value]
            assert len(stops) == 1, f"session {value} was in a failed {kind} call, not stopped"
            message, stopped_at = stops[0]
            assert EXPECTED[kind] in message, (value, kind, message)
            assert stopped_at - at < STOP_WITHIN_S, (value, kind, stopped_at - at)
        elif stops:
            assert EXPECTED["new_state"] in stops[0][0], (value, stops[0][0])
    # A failed new_state stops its own session only, not the others of its round.
    told = sum(1 for sink in sinks.values() for m, _ in sink.stops if EXPECTED["new_state"] in m)
    assert told == sum(1 for kind, _, _ in failures if kind == "new_state")


def churn(service: PipelineService, sessions: int,
          enough: Callable[[dict[int, EventSink]], bool], timeout_s: float = 90) -> \
        dict[int, EventSink]:
    """Stream `sessions` sessions at once, each fed frames of its own value (1, 2, ...), and
    replace each stopped one at once (attached while the worker handles failures), until
    `enough(sinks)` holds or 240 sessions were used; then close them and stop the service (its
    worker threads joined: nothing reaches a sink after this). Returns every session's sink."""
    live: dict[int, Stream] = {}
    sinks: dict[int, EventSink] = {}

    def open_session() -> None:
        value = len(sinks) + 1
        sinks[value] = EventSink()
        live[value] = service.open_stream(sinks[value], offers_video=True)

    for _ in range(sessions):
        open_session()
    deadline = time.monotonic() + timeout_s
    pts = 0
    while not enough(sinks) and len(sinks) < 240:
        assert time.monotonic() < deadline, "too few failures"
        pts += 3000
        for value, stream in list(live.items()):
            if sinks[value].stops:
                del live[value]
                open_session()
            else:
                stream.push(frame(value, pts))
        time.sleep(0.002)  # the feed's pace
    for stream in live.values():
        stream.close()
    service.stop()
    return sinks


def test_every_session_of_a_failed_call_is_stopped_once_with_nothing_after(
        busy_core: None) -> None:
    seed = random.randrange(1 << 30)
    FlakyPipeline.failures.clear()
    service = PipelineService(devices=["cpu", "cpu"], text_fps=50)
    service.start()
    try:
        status = service.load_blocking("test-flaky", {"fail_rate": 0.15, "seed": seed,
                                                       "batch": 3})
        assert status.status == "loaded", status
        # 4 sessions per worker: two calls per round on each.
        sinks = churn(service, 8, lambda _: sum(1 for *_, v in FlakyPipeline.failures if v) >= 40)
        check_guarantee(sinks, list(FlakyPipeline.failures))
        assert sum(1 for s in sinks.values() if s.stops) >= 20, f"seed {seed}"
    finally:
        service.stop()
        FlakyPipeline.failures.clear()


def test_a_stop_is_told_once_and_delivery_after_it_is_refused() -> None:
    """`Stream.stop` and `Stream.deliver` directly: the second stop is a no-op, and frames
    offered after the stop never reach the sink (also from racing threads)."""
    service = PipelineService(devices=["cpu"], text_fps=50)
    service.start()
    service.load_blocking("passthrough")
    sink = EventSink()
    stream = service.open_stream(sink, offers_video=True, held=True)  # the worker stays out
    out = [OutputFrame(image=np.zeros((2, 2, 3), np.uint8), pts=0,
                       time_base=Fraction(1, 90_000), source_arrived=None)]
    assert stream.deliver(out)
    barrier = threading.Barrier(3)

    def deliver_many() -> None:
        barrier.wait()
        for _ in range(2000):
            stream.deliver(out)

    threads = [threading.Thread(target=deliver_many) for _ in range(2)]
    for thread in threads:
        thread.start()
    barrier.wait()
    assert stream.stop("first")
    assert not stream.stop("second")
    for thread in threads:
        thread.join()
    assert [m for m, _ in sink.stops] == ["first"]
    assert sink.frames_after_stop() == 0
    assert not stream.deliver(out)
    service.stop()
