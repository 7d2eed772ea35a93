"""What runs a worker's pipeline calls: one loaded pipeline, each session's state, batching.

A worker (pipeline/serving/worker.py) decides which of its sessions have work and turns results into
timestamped output; its engine turns the jobs of one round (one per session) into one output
chunk each. `LocalEngine` runs the pipeline in this process. The Ray backend runs a
`LocalEngine` inside each actor (pipeline/serving/ray_backend/), so both backends keep state, batch
and fail in the same way; only uint8 frames and small parameter records cross the wire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from pipeline.base import FrameRequest, LoadParams, Pipeline, PipelineError, ProgressCallback
from pipeline.errors import PreviousKeptError
from pipeline.params import FrameParams

log = logging.getLogger(__name__)


class WorkerLost(RuntimeError):
    """The process that ran an engine is gone (a Ray actor died). Its sessions must stop; the
    message says why."""


@dataclass
class Job:
    """One session's share of a round."""

    key: str
    """The stream's id: its state lives under it, on the engine."""
    frames: np.ndarray | None
    """T×H×W×3 uint8 RGB, oldest first; None in text mode."""
    size: tuple[int, int]
    params: FrameParams
    index: int


@dataclass
class JobResult:
    chunk: np.ndarray | None
    """T×H×W×3 uint8 RGB (T ≥ 1), or None when the job failed."""
    error: str | None
    next_frames: int
    """Input frames the session's next video call consumes (`Pipeline.frames_per_call`)."""
    process_s: float
    """Wall time of the pipeline call that produced it."""
    engine_s: float = 0.0
    """Wall time of the whole `run` it came from (all its batches)."""


class Engine(Protocol):
    """What a worker's thread calls: `LocalEngine`, or the front's side of a Ray actor."""

    device: str | None
    first_frames: int

    def load(self, cls: type[Pipeline], params: LoadParams,
             progress: ProgressCallback) -> None: ...
    def run(self, jobs: list[Job]) -> list[JobResult]: ...
    def release(self, keys: list[str]) -> None: ...
    def close(self) -> None: ...


class LocalEngine:
    """A pipeline in this process. `run`, `load` and `close` may be called from any thread; they
    are serialised (a load waits for the round in flight)."""

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.pipeline: Pipeline | None = None
        self._lock = threading.Lock()
        self._states: dict[str, Any] = {}

    @property
    def first_frames(self) -> int:
        """What a new session's (or a reset session's) first video call consumes."""
        pipeline = self.pipeline
        return 1 if pipeline is None else max(1, int(pipeline.frames_per_call(None)))

    def load(self, cls: type[Pipeline], params: LoadParams, progress: ProgressCallback) -> None:
        """Build and load a pipeline, freeing the previous one first (GPU memory). Raises what
        the pipeline raises; the engine is then empty. A load that only changes the LoRAs of
        the loaded pipeline is done in place when the pipeline can (`change_loras`); if that
        fails, PreviousKeptError: the pipeline as it was (and its sessions' state) stays."""
        with self._lock:
            old = self.pipeline
            if old is not None and type(old) is cls and _only_loras_differ(old.params, params):
                try:
                    if old.change_loras(params, progress):
                        return
                except PipelineError as exc:
                    raise PreviousKeptError(str(exc)) from exc
            self.pipeline = None
            self._states.clear()
            if old is not None:
                progress(0.0, "unloading previous pipeline")
                old.close()
            progress(0.0, f"preparing {cls.id}")  # until the pipeline reports its own
            pipeline = cls(params)
            if self.device is not None:
                pipeline.use_device(self.device)
            pipeline.load(progress)
            self.pipeline = pipeline

    def close(self) -> None:
        with self._lock:
            pipeline, self.pipeline = self.pipeline, None
            self._states.clear()
            if pipeline is not None:
                pipeline.close()

    def state_of(self, key: str) -> Any:
        """A session's pipeline state (what `new_state()` made), or None (for inspection)."""
        return self._states.get(key)

    def release(self, keys: Sequence[str]) -> None:
        """Forget sessions' state (they ended or moved)."""
        with self._lock:
            for key in keys:
                self._states.pop(key, None)

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        """One output per job, in order. Jobs with equal `batch_key` share `process` calls (up
        to `max_batch_size`); a failing call fails only its own jobs, and a job whose
        `new_state` or `batch_key` raises fails alone. Raises PipelineError when nothing is
        loaded; BaseExceptions that are not Exceptions propagate."""
        started = time.perf_counter()
        with self._lock:
            pipeline = self.pipeline
            if pipeline is None:
                raise PipelineError("No pipeline is loaded on this worker.")
            results: list[JobResult | None] = [None] * len(jobs)
            groups: dict[Hashable, list[tuple[int, FrameRequest]]] = defaultdict(list)
            for position, job in enumerate(jobs):
                try:
                    request = self._request(pipeline, job)
                    groups[pipeline.batch_key(request)].append((position, request))
                except Exception as exc:  # noqa: BLE001 - logged by _failed; fails this job only
                    results[position] = _failed(pipeline, 1, exc, started)
            for group in groups.values():
                for start in range(0, len(group), pipeline.max_batch_size):
                    part = group[start:start + pipeline.max_batch_size]
                    for position, result in zip([p for p, _ in part],
                                                self._call(pipeline, part), strict=True):
                        results[position] = result
            done = [r for r in results if r is not None]
            engine_s = time.perf_counter() - started
            for result in done:
                result.engine_s = engine_s
            return done

    def _request(self, pipeline: Pipeline, job: Job) -> FrameRequest:
        if job.key not in self._states or job.params.reset_cache:
            self._states[job.key] = pipeline.new_state()
        return FrameRequest(frames=job.frames, size=job.size, params=job.params,
                            state=self._states[job.key], index=job.index)

    def _call(self, pipeline: Pipeline, part: list[tuple[int, FrameRequest]]) -> list[JobResult]:
        started = time.perf_counter()
        try:
            outputs = pipeline.process([request for _, request in part])
            if len(outputs) != len(part):
                raise PipelineError(f"returned {len(outputs)} outputs for {len(part)} requests")
            chunks = [as_chunk(output) for output in outputs]
            next_frames = [max(1, int(pipeline.frames_per_call(request.state)))
                           for _, request in part]
        except Exception as exc:  # noqa: BLE001 - logged by _failed; fails this call only
            failed = _failed(pipeline, len(part), exc, started)
            return [replace(failed) for _ in part]
        elapsed = time.perf_counter() - started
        return [JobResult(chunk, None, frames, elapsed)
                for chunk, frames in zip(chunks, next_frames, strict=True)]


def _failed(pipeline: Pipeline, batch: int, exc: Exception, started: float) -> JobResult:
    """The result of each job in a failed call (the worker stops their sessions)."""
    log.error("pipeline %s failed on a batch of %d", pipeline.id, batch, exc_info=exc)
    detail = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
    return JobResult(None, f"Pipeline error: {detail}", 1, time.perf_counter() - started)


def as_chunk(output: object) -> np.ndarray:
    """A pipeline's output for one request as a T×H×W×3 uint8 RGB array (a view for images)."""
    if isinstance(output, np.ndarray) and output.dtype == np.uint8 and output.shape[-1:] == (3,):
        if output.ndim == 3:
            return output[None]
        if output.ndim == 4 and output.shape[0] >= 1:
            return output
    raise PipelineError("a pipeline must return an H×W×3 image or a T×H×W×3 chunk, uint8 RGB")


_LORA_FIELDS = {"loras", "lora_merge_mode"}


def _only_loras_differ(old: LoadParams, new: LoadParams) -> bool:
    return (type(old) is type(new) and old != new
            and old.model_dump(exclude=_LORA_FIELDS) == new.model_dump(exclude=_LORA_FIELDS))
