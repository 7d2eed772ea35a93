"""Test pipelines for several workers (local devices and Ray actors; registered on import).

Ray actors import this module by reference (Ray hands the driver's sys.path to its workers), so
what a pipeline records in class attributes is visible only in the process it ran in; what the
tests need from an actor travels in the output frames instead."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pipeline import FrameRequest, LoadParams, Mode, Pipeline, ProgressCallback
from pipeline.registry import register


class DeviceParams(LoadParams):
    delay_s: float = 0.02
    """Each call sleeps this long (a model's compute), so that frames of sessions meet."""
    fail_load_on: str | None = None
    """Loading raises on the worker whose device is this (a broken GPU)."""


@register
class DevicePipeline(Pipeline):
    """Inverts the picture and marks each output frame: pixel (0, 0) holds (batch size, calls
    made by this copy mod 256, this process's id mod 256). Records, per copy, the device the
    service gave it and every batch size."""

    id = "test-device"
    name = description = "test: device worker"
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    Params = DeviceParams
    copies: ClassVar[list[DevicePipeline]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()
    params: DeviceParams

    def __init__(self, params: LoadParams) -> None:
        super().__init__(params)
        self.batches: list[int] = []
        self.fail: str | None = None  # a test sets it to make this copy's calls raise
        with self.lock:
            self.copies.append(self)

    def load(self, progress: ProgressCallback) -> None:
        progress(0.5, f"loading on {self.assigned_device}")
        if self.params.fail_load_on is not None and self.params.fail_load_on == \
                self.assigned_device:
            raise RuntimeError(f"out of memory on {self.assigned_device}")

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        if self.fail:
            raise RuntimeError(self.fail)
        self.batches.append(len(batch))
        time.sleep(self.params.delay_s)
        out = []
        for request in batch:
            source = request.frame
            image = (255 - source if source is not None
                     else np.zeros((*request.size, 3), np.uint8))
            image = np.array(image, copy=True)
            image[0, 0] = (len(batch), len(self.batches) % 256, os.getpid() % 256)
            out.append(image)
        return out


class FlakyParams(LoadParams):
    fail_rate: float = 0.2
    """Chance that a call fails."""
    kinds: tuple[str, ...] = ("raise", "count", "dtype", "new_state")
    """How calls fail: `process` raises, returns a wrong count, or a malformed output; a
    session's `new_state` raises (at a fifth of `fail_rate`)."""
    seed: int = 0
    batch: int = 3
    """`max_batch_size`: a round of more sessions is split into several calls."""


@register
class FlakyPipeline(Pipeline):
    """Fails at random, in every way a call can fail, and records which sessions were in it.

    Each session feeds frames of its own value (pixel (0, 0)). A failure is recorded in
    `failures` as (kind, wall time, the call's values) in the process it ran in; a `raise`
    failure's message carries the same, `injected raise at <time> in [v1, ...]`, so a test can
    check it across a Ray hop too."""

    id = "test-flaky"
    name = description = "test: random call failures"
    modes: ClassVar[tuple[Mode, ...]] = ("video",)
    Params = FlakyParams
    params: FlakyParams
    failures: ClassVar[list[tuple[str, float, list[int]]]] = []

    def __init__(self, params: LoadParams) -> None:
        super().__init__(params)
        self.max_batch_size = self.params.batch
        self._rng = np.random.default_rng(self.params.seed)

    def _failing(self, kinds: tuple[str, ...], rate: float) -> str | None:
        kinds = tuple(k for k in kinds if k in self.params.kinds)
        if not kinds or self._rng.random() >= rate:
            return None
        return kinds[int(self._rng.integers(len(kinds)))]

    def new_state(self) -> dict[str, int]:
        if self._failing(("new_state",), self.params.fail_rate / 5):
            self.failures.append(("new_state", time.time(), []))
            raise RuntimeError("injected new_state")
        return {"calls": 0}

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        values = sorted(int(r.frame[0, 0, 0]) for r in batch if r.frame is not None)
        kind = self._failing(("raise", "count", "dtype"), self.params.fail_rate)
        if kind is not None:
            now = time.time()
            self.failures.append((kind, now, values))
            if kind == "raise":
                raise RuntimeError(f"injected raise at {now:.6f} in {values}")
            if kind == "count":
                return [np.zeros((8, 8, 3), np.uint8) for _ in range(len(batch) + 1)]
            return [np.zeros((8, 8, 3), np.float32) for _ in batch]
        for request in batch:
            request.state["calls"] += 1
        return [np.array(r.frame, copy=True) for r in batch]
