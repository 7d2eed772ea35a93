"""Frames crossing between the transport and the pipeline service, and the latest-frame slot."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, TypeVar

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


@dataclass
class OutputFrame:
    image: np.ndarray
    pts: int
    time_base: Fraction
    source_arrived: float | None
    """Arrival time of the input it was made from; None for generated (text-mode) frames."""


T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds at most one item: a newer item replaces an unconsumed one (latest wins)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._item: T | None = None

    def put(self, item: T) -> bool:
        """Store `item`; True when it replaced one that was never taken (a drop)."""
        with self._lock:
            replaced = self._item is not None
            self._item = item
            return replaced

    def take(self) -> T | None:
        with self._lock:
            item, self._item = self._item, None
            return item

    def ready(self) -> bool:
        return self._item is not None
