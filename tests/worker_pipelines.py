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
