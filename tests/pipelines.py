"""Small real pipelines used by tests to exercise the service (registered on import)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from pipeline import FrameRequest, Mode, OutputFrame, Pipeline, PipelineError, ProgressCallback
from pipeline.registry import register


@register
class InvertPipeline(Pipeline):
    """Inverts the picture; records every batch size it was given."""

    id = "test-invert"
    name = description = "test: invert"
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    batches: ClassVar[list[int]] = []
    delay_s: ClassVar[float] = 0.0
    busy: ClassVar[threading.Event] = threading.Event()  # set while process() runs

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        type(self).batches.append(len(batch))
        self.busy.set()
        time.sleep(self.delay_s)
        self.busy.clear()
        return [255 - (r.frame if r.frame is not None else np.zeros((*r.size, 3), np.uint8))
                for r in batch]


@register
class FaultyPipeline(Pipeline):
    """Raises on any frame whose prompt says "boom" (SystemExit, which would end a thread, for
    "die"); otherwise passes frames through."""

    id = "test-faulty"
    name = description = "test: faulty"
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        for r in batch:
            if any("die" in p.text for p in r.params.prompts):
                raise SystemExit("the pipeline called exit()")
            if any("boom" in p.text for p in r.params.prompts):
                raise RuntimeError("boom: the model exploded")
        return [r.frame if r.frame is not None else np.zeros((*r.size, 3), np.uint8)
                for r in batch]


@register
class ChunkPipeline(Pipeline):
    """A video model's shape: consumes `CHUNK` frames per call (one more on a session's first
    call), returns them inverted as one T×H×W×3 chunk; text mode returns `CHUNK` frames whose
    value counts the calls. Records every call's chunk lengths."""

    id = "test-chunk"
    name = description = "test: chunked video model"
    modes: ClassVar[tuple[Mode, ...]] = ("video", "text")
    CHUNK: ClassVar[int] = 3
    calls: ClassVar[list[list[int]]] = []
    gate: ClassVar[threading.Event] = threading.Event()  # process() waits for it
    busy: ClassVar[threading.Event] = threading.Event()  # set while process() runs

    def new_state(self) -> dict[str, int]:
        return {"calls": 0}

    def frames_per_call(self, state: dict[str, int] | None) -> int:
        return self.CHUNK + 1 if state is None or state["calls"] == 0 else self.CHUNK

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        type(self).calls.append([0 if r.frames is None else len(r.frames) for r in batch])
        self.busy.set()
        self.gate.wait(30)
        self.busy.clear()
        out = []
        for r in batch:
            r.state["calls"] += 1
            if r.frames is None:
                out.append(np.full((self.CHUNK, *r.size, 3), r.state["calls"], np.uint8))
            else:
                out.append(255 - r.frames)
        return out


ChunkPipeline.gate.set()


@register
class GatedLoadPipeline(Pipeline):
    """Loading waits for `gate`, reporting progress; fails when `fail` is set."""

    id = "test-gated"
    name = description = "test: gated load"
    gate: ClassVar[threading.Event] = threading.Event()
    fail: ClassVar[bool] = False

    def load(self, progress: ProgressCallback) -> None:
        progress(0.5, "waiting for the gate")
        if not self.gate.wait(30):
            raise PipelineError("gate never opened")
        if self.fail:
            raise PipelineError("weights not found: pass a local folder")

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [r.frame for r in batch]  # type: ignore[misc]


class RecordingSink:
    """A StreamSink that keeps what the worker hands it, for tests of the service."""

    def __init__(self) -> None:
        self.frames: list[OutputFrame] = []
        self.calls: list[int] = []  # frames per on_frames call (chunk sizes)
        self.stopped: list[str] = []
        self.event = threading.Event()

    def on_frames(self, frames: Sequence[OutputFrame]) -> None:
        self.frames.extend(frames)
        self.calls.append(len(frames))
        self.event.set()

    def on_stopped(self, message: str) -> None:
        self.stopped.append(message)
        self.event.set()

    def wait(self, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and not self.stopped and time.monotonic() < deadline:
            self.event.wait(0.05)
            self.event.clear()
