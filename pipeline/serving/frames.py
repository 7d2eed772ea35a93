"""Frames crossing between the transport and the pipeline service, and each session's window of
latest input frames."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, TypeVar

import numpy as np

CLOCK_RATE = 90_000
CLOCK_TIME_BASE = Fraction(1, CLOCK_RATE)  # RTP's video clock


@dataclass
class InputFrame:
    """A received frame. `decode` turns it into H×W×3 uint8 RGB; it runs on the worker thread,
    and only for frames that are processed (a dropped frame is never converted)."""

    decode: Callable[[], np.ndarray]
    pts: int | None
    time_base: Fraction | None
    arrived: float
    """time.monotonic() when the transport handed it over (for latency figures)."""
    native: Any = None
    """The transport's own decoded frame (opaque here). A pipeline that passes its input
    through (`Pipeline.passes_input_through`) gets it sent back untouched: no RGB round trip."""


@dataclass
class OutputFrame:
    image: Any
    """H×W×3 uint8 RGB, or an input's `native` frame handed back untouched."""
    pts: int
    time_base: Fraction
    source_arrived: float | None
    """Arrival time of the input it was made from; None for generated (text-mode) frames."""


T = TypeVar("T")


class FrameWindow(Generic[T]):
    """A session's most recent input frames, at most `capacity` of them (the frames one pipeline
    call consumes). A newer frame pushes out the oldest one never taken: latest wins, and the
    pushed-out frame is a drop. An image pipeline is the case capacity = 1."""

    def __init__(self, capacity: int = 1) -> None:
        self._lock = threading.Lock()
        self._items: deque[T] = deque()
        self._capacity = capacity

    def set_capacity(self, capacity: int) -> int:
        """Resize (the worker does, from the pipeline's `frames_per_call`); returns the number
        of frames dropped to fit."""
        with self._lock:
            self._capacity = max(1, capacity)
            return self._trim()

    def put(self, item: T) -> int:
        """Store `item`; returns how many older frames it pushed out (0 or 1): drops."""
        with self._lock:
            self._items.append(item)
            return self._trim()

    def take(self) -> list[T] | None:
        """All frames of a full window, oldest first, emptying it; None until it is full."""
        with self._lock:
            if len(self._items) < self._capacity:
                return None
            items = list(self._items)
            self._items.clear()
            return items

    def clear(self) -> int:
        with self._lock:
            dropped = len(self._items)
            self._items.clear()
            return dropped

    def __len__(self) -> int:
        return len(self._items)

    def _trim(self) -> int:
        dropped = 0
        while len(self._items) > self._capacity:
            self._items.popleft()
            dropped += 1
        return dropped
