"""Event-loop lag: how late the loop runs a callback that is due now.

Everything of the server's I/O (HTTP, ICE, DTLS, RTP, the data channels) runs on one asyncio
loop; a blocking call on it delays every session at once. The probe sleeps a short tick and
measures how much later than asked it woke; `max_lag_s()` is the worst over the last second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque


class LoopLagProbe:
    def __init__(self, tick_s: float = 0.02, window_s: float = 1.0) -> None:
        self.tick_s = tick_s
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, lag), oldest first
        self._task: asyncio.Task[None] | None = None
        self.worst_s = 0.0  # since start
        self._last = 0.0  # when the probe last ran

    def start(self) -> None:
        """Start sampling on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None

    def max_lag_s(self) -> float | None:
        """The largest lag seen over the last `window_s`; None before the first sample (or
        when the probe is not running). A stalled loop counts as lagging since its last tick."""
        if self._task is None or not self._last:
            return None
        now = time.monotonic()
        self._trim(now)
        worst = max((lag for _, lag in self._samples), default=0.0)
        # A loop blocked right now has not recorded the lag yet: count the time overdue.
        return max(worst, now - self._last - self.tick_s)

    async def _run(self) -> None:
        while True:
            asked = time.monotonic()
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            lag = max(0.0, now - asked - self.tick_s)
            self.worst_s = max(self.worst_s, lag)
            self._last = now
            self._samples.append((now, lag))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._samples.popleft()
