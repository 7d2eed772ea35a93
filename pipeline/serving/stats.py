"""Per-stream counters and rates, updated by the worker and read by the transport."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 2.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        return len(self._times) / self._window

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()


class StreamStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.frames_in = 0
        self.frames_dropped = 0
        self.frames_out = 0
        self._in = RateMeter()
        self._out = RateMeter()
        self._latency_ms: float | None = None
        self._process_ms: float | None = None
        self._chunk_wait_ms: float | None = None
        self._chunk_frames = 1

    def received(self, dropped: int) -> None:
        with self._lock:
            self.frames_in += 1
            self.frames_dropped += dropped
            self._in.tick(time.monotonic())

    def dropped(self, count: int) -> None:
        if count:
            with self._lock:
                self.frames_dropped += count

    def produced(self, latencies_s: list[float | None], process_s: float,
                 chunk_wait_s: float | None = None) -> None:
        """One call's output: each frame's latency from its input's arrival (None when it had
        none), the call's processing time, and how long the chunk waited for its frames."""
        now = time.monotonic()
        with self._lock:
            self.frames_out += len(latencies_s)
            for latency in latencies_s:
                self._out.tick(now)
                if latency is not None:
                    self._latency_ms = _ema(self._latency_ms, latency * 1000.0)
            self._process_ms = _ema(self._process_ms, process_s * 1000.0)
            self._chunk_frames = len(latencies_s)
            if chunk_wait_s is not None:
                self._chunk_wait_ms = _ema(self._chunk_wait_ms, chunk_wait_s * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "fps_in": round(self._in.rate(now), 2),
                "fps_out": round(self._out.rate(now), 2),
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "pipeline_latency_ms": _round(self._latency_ms),
                "process_ms": _round(self._process_ms),
                "chunk_frames": self._chunk_frames,
                "chunk_wait_ms": _round(self._chunk_wait_ms),
            }


def _ema(old: float | None, new: float, k: float = 0.2) -> float:
    return new if old is None else old + k * (new - old)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
