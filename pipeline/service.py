"""The shared pipeline service: one loaded pipeline, a worker thread, and every session's stream.

Threads: the event loop only calls the cheap, lock-guarded entry points (`load`, `status`,
`open_stream`, `Stream.push/update/close`). The loader thread builds pipelines; the worker thread
is the only caller of `Pipeline.process`. Results leave through each stream's sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from . import registry
from .base import FrameRequest, LoadParams, Pipeline, PipelineError
from .errors import LoadingError, LoadInProgressError, NotLoadedError, UnsupportedModeError
from .frames import InputFrame, OutputFrame
from .params import Mode, ParameterUpdate
from .paths import LocalPathPolicy
from .stream import Stream, StreamSink

log = logging.getLogger(__name__)

Status = Literal["not_loaded", "loading", "loaded", "error"]


class PipelineStatus(BaseModel):
    status: Status
    pipeline_id: str | None
    load_params: dict[str, Any] | None
    error: str | None
    loading_stage: str | None
    progress: float | None


@dataclass
class _Work:
    stream: Stream
    mode: Mode
    sources: list[InputFrame] | None
    """The chunk of input frames, oldest first; None in text mode."""
    collected: float


class PipelineService:
    def __init__(self, *, text_fps: float = 20.0, idle_wait_s: float = 0.5,
                 path_policy: LocalPathPolicy | None = None) -> None:
        self.text_fps = text_fps
        self.path_policy = path_policy or LocalPathPolicy()
        self._idle_wait = idle_wait_s
        self._cond = threading.Condition()
        self._run_lock = threading.Lock()  # held while a pipeline processes or is swapped
        self._streams: list[Stream] = []
        self._pipeline: Pipeline | None = None
        self._first_chunk = 1  # frames the loaded pipeline takes on a session's first call
        self._status: Status = "not_loaded"
        self._pipeline_id: str | None = None
        self._load_params: LoadParams | None = None
        self._error: str | None = None
        self._stage: str | None = None
        self._progress: float | None = None
        self._loader: threading.Thread | None = None
        self._worker: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="pipeline-worker", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in (self._worker, self._loader):
            if thread is not None:
                thread.join(timeout)
        with self._run_lock:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None

    def wake(self) -> None:
        self._ensure_worker()
        with self._cond:
            self._cond.notify_all()

    # --- loading ------------------------------------------------------------------------------

    def load(self, pipeline_id: str, load_params: dict[str, Any] | None = None) -> None:
        """Validate and start loading; status is `loading` when this returns.

        Raises UnknownPipelineError, pydantic.ValidationError, ForbiddenPathError,
        LoadInProgressError."""
        cls = registry.get(pipeline_id)
        params = cls.Params.model_validate(load_params or {})
        for ref in params.local_refs():
            self.path_policy.check(ref)
        with self._cond:
            if (self._status in ("loading", "loaded") and self._pipeline_id == pipeline_id
                    and self._load_params == params):
                # The same load again (after defaults; unknown keys are dropped) joins the
                # running one, or is a no-op: Scope's app posts it twice per Start.
                return
            if self._status == "loading":
                raise LoadInProgressError(
                    f"Pipeline {self._pipeline_id!r} is loading; try again when it is done.")
            self._status, self._error = "loading", None
            self._pipeline_id, self._load_params = pipeline_id, params
            self._stage, self._progress = "waiting for the frames in flight", 0.0
            self._loader = threading.Thread(target=self._load, args=(cls, params),
                                            name=f"pipeline-load-{pipeline_id}", daemon=True)
            self._loader.start()

    def unload(self) -> None:
        """Free the loaded pipeline (GPU memory included); its sessions get stream_stopped.
        Raises LoadInProgressError while a load runs."""
        with self._cond:
            if self._status == "loading":
                raise LoadInProgressError("A pipeline is loading; unload it when it is done.")
            self._status, self._error, self._progress, self._stage = "not_loaded", None, None, None
            self._pipeline_id, self._load_params = None, None
            streams = list(self._streams)
            self._streams.clear()
        for stream in streams:
            stream.sink.on_stopped("The pipeline was unloaded.")
        with self._run_lock:  # after the batch in flight
            pipeline, self._pipeline = self._pipeline, None
            if pipeline is not None:
                pipeline.close()

    def load_blocking(self, pipeline_id: str, load_params: dict[str, Any] | None = None,
                      timeout: float | None = None) -> PipelineStatus:
        """Load and wait for the outcome (for start-up, tests and benchmarks)."""
        self.load(pipeline_id, load_params)
        loader = self._loader
        if loader is not None:
            loader.join(timeout)
        return self.status()

    def _load(self, cls: type[Pipeline], params: LoadParams) -> None:
        with self._run_lock:  # waits for a batch in flight; frees the old model first
            old, self._pipeline = self._pipeline, None
            if old is not None:
                self._set_progress(0.0, "unloading previous pipeline")
                old.close()
        try:
            self._set_progress(0.0, f"preparing {cls.id}")  # until the pipeline reports its own
            pipeline = cls(params)
            pipeline.load(self._set_progress)
        except Exception as exc:  # any failure becomes a status the user can read
            message = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
            log.exception("loading pipeline %s failed", cls.id)
            with self._cond:
                self._status, self._error = "error", message
                self._stage, self._progress = None, None
                streams = list(self._streams)
                self._streams.clear()
            for stream in streams:
                stream.sink.on_stopped(f"Pipeline {cls.id!r} failed to load: {message}")
            return
        with self._cond:
            if self._stopping:
                pipeline.close()
                return
            self._pipeline = pipeline
            self._first_chunk = pipeline.frames_per_call(None)
            self._status, self._stage, self._progress = "loaded", None, 1.0
            # Receive-only sessions cannot continue on a pipeline without a text mode.
            stranded = [s for s in self._streams if not s.offers_video and "text" not in cls.modes]
            for stream in stranded:
                self._streams.remove(stream)
            self._cond.notify_all()
        for stream in stranded:
            stream.sink.on_stopped(f"Pipeline {cls.id!r} has no text mode; this session sends "
                                   "no video. Reconnect with a video input.")
        log.info("pipeline %s loaded", cls.id)

    def _set_progress(self, fraction: float, stage: str) -> None:
        with self._cond:
            self._progress = max(0.0, min(1.0, float(fraction)))
            self._stage = stage

    def status(self) -> PipelineStatus:
        with self._cond:
            return PipelineStatus(
                status=self._status,
                pipeline_id=self._pipeline_id,
                load_params=None if self._load_params is None else self._load_params.model_dump(),
                error=self._error,
                loading_stage=self._stage if self._status == "loading" else None,
                progress=self._progress if self._status in ("loading", "loaded") else None,
            )

    @property
    def pipeline_class(self) -> type[Pipeline] | None:
        """The class of the pipeline loaded or loading, if any."""
        return registry.get(self._pipeline_id) if self._pipeline_id else None

    @property
    def first_chunk_frames(self) -> int:
        """Input frames the loaded pipeline takes on a session's first call (or after a reset)."""
        return self._first_chunk

    def defaults_for(self, mode: Mode) -> ParameterUpdate:
        cls = self.pipeline_class
        defaults = cls.mode_defaults() if cls else {}
        return defaults.get(mode) or ParameterUpdate()

    # --- streams ------------------------------------------------------------------------------

    def open_stream(self, sink: StreamSink, *, offers_video: bool,
                    initial: ParameterUpdate | None = None) -> Stream:
        """Attach a session. Raises NotLoadedError, LoadingError, UnsupportedModeError."""
        with self._cond:
            if self._status == "loading":
                raise LoadingError("Pipeline is loading; retry shortly.")
            if self._status != "loaded" or self._pipeline is None:
                reason = f" The last load failed: {self._error}" if self._error else ""
                raise NotLoadedError("Pipeline not loaded. Please load pipeline first." + reason)
            modes = type(self._pipeline).modes
            wanted = initial.input_mode if initial else None
            if wanted is not None and wanted not in modes:
                raise UnsupportedModeError(
                    f"Pipeline {self._pipeline_id!r} does not support input_mode {wanted!r} "
                    f"(supported: {', '.join(modes)}).")
            if not offers_video and "text" not in modes:
                raise UnsupportedModeError(
                    f"Pipeline {self._pipeline_id!r} needs input video (it has no text mode); "
                    "send a video track.")
            stream = Stream(self, sink, offers_video=offers_video, initial=initial)
            stream.window.set_capacity(self._first_chunk)
            self._streams.append(stream)
            self._cond.notify_all()
            return stream

    def detach(self, stream: Stream) -> None:
        with self._cond:
            if stream in self._streams:
                self._streams.remove(stream)

    @property
    def stream_count(self) -> int:
        with self._cond:
            return len(self._streams)

    # --- the worker ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                work, pipeline = self._wait_for_work()
            if pipeline is None:
                return
            try:
                with self._run_lock:
                    if self._pipeline is pipeline:  # not swapped out while we waited
                        self._process(pipeline, work)
            except BaseException as exc:
                log.exception("pipeline worker caught %s", type(exc).__name__)
                self._fail([item.stream for item in work],
                           f"Pipeline worker crashed: {type(exc).__name__}: {exc}")

    def _ensure_worker(self) -> None:
        """Restart the worker if it died anyway (it should not: `_run` catches everything)."""
        worker = self._worker
        if worker is not None and not worker.is_alive() and not self._stopping:
            log.error("pipeline worker died; restarting it")
            self._worker = None
            self.start()

    def _wait_for_work(self) -> tuple[list[_Work], Pipeline | None]:
        """Block (holding the condition) until some stream has work. (_, None) means stop."""
        while not self._stopping:
            now = time.monotonic()
            timeout = self._idle_wait
            if self._status == "loaded" and self._pipeline is not None:
                work, next_due = self._collect(self._pipeline, now)
                if work:
                    return work, self._pipeline
                if next_due is not None:
                    timeout = min(timeout, max(0.0, next_due - now))
            self._cond.wait(timeout)
        return [], None

    def _collect(self, pipeline: Pipeline, now: float) -> tuple[list[_Work], float | None]:
        modes = type(pipeline).modes
        work: list[_Work] = []
        next_due: float | None = None
        for stream in self._streams:
            mode = stream.resolve_mode(modes, now)
            if mode == "video":
                fresh = stream.state_owner is not pipeline or stream.params.reset_pending
                stream.stats.dropped(stream.window.set_capacity(
                    pipeline.frames_per_call(None if fresh else stream.state)))
                sources = stream.window.take()
                if sources is not None:
                    work.append(_Work(stream, mode, sources, now))
            elif mode == "text":
                stream.window.clear()  # input is not used in text mode
                if now >= stream.next_due:
                    work.append(_Work(stream, mode, None, now))
                next_due = stream.next_due if next_due is None else min(next_due, stream.next_due)
        return work, next_due

    def _process(self, pipeline: Pipeline, work: list[_Work]) -> None:
        groups: dict[Hashable, list[tuple[_Work, FrameRequest]]] = defaultdict(list)
        for item in work:
            stream = item.stream
            if stream.params.paused:
                self._repeat_last(item)
                continue
            try:
                request = self._request(pipeline, item)
            except Exception as exc:  # noqa: BLE001 - a broken frame stops only its session
                self._fail([stream], f"Could not read the input frame: {exc}")
                continue
            groups[pipeline.batch_key(request)].append((item, request))
        for group in groups.values():
            for start in range(0, len(group), pipeline.max_batch_size):
                self._run_batch(pipeline, group[start:start + pipeline.max_batch_size])

    def _request(self, pipeline: Pipeline, item: _Work) -> FrameRequest:
        stream = item.stream
        params = stream.params.snapshot(self.defaults_for(item.mode))
        if stream.state_owner is not pipeline or params.reset_cache:
            stream.state, stream.state_owner = pipeline.new_state(), pipeline
        frames = None if item.sources is None else np.stack([s.decode() for s in item.sources])
        size = frames.shape[1:3] if frames is not None else (pipeline.params.height,
                                                             pipeline.params.width)
        return FrameRequest(frames=frames, size=(int(size[0]), int(size[1])), params=params,
                            state=stream.state, index=stream.produced)

    def _run_batch(self, pipeline: Pipeline, batch: list[tuple[_Work, FrameRequest]]) -> None:
        started = time.perf_counter()
        try:
            outputs = pipeline.process([request for _, request in batch])
            if len(outputs) != len(batch):
                raise PipelineError(f"returned {len(outputs)} outputs for {len(batch)} requests")
            chunks = [_as_chunk(output) for output in outputs]
        except Exception as exc:
            log.exception("pipeline %s failed on a batch of %d", pipeline.id, len(batch))
            detail = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {exc}"
            self._fail([item.stream for item, _ in batch], f"Pipeline error: {detail}")
            return
        elapsed = time.perf_counter() - started
        now = time.monotonic()
        for (item, _), chunk in zip(batch, chunks, strict=True):
            stream = item.stream
            frames = stream.stamp(chunk, item.sources, now)
            stream.produced += len(frames)
            stream.last_output = frames[-1]
            stream.stats.dropped(stream.window.set_capacity(pipeline.frames_per_call(stream.state)))
            if item.sources is None:  # text mode: the next call is due when this chunk has played
                stream.next_due = max(stream.next_due + len(frames) / self.text_fps,
                                      item.collected)
            stream.stats.produced(_latencies(frames, now, item.sources is not None), elapsed,
                                  chunk_wait_s=_chunk_wait(item.sources))
            if not stream.closed:
                stream.sink.on_frames(frames)

    def _repeat_last(self, item: _Work) -> None:
        """Paused: the output repeats the last frame, at the input's pace."""
        stream = item.stream
        count = 1 if item.sources is None else len(item.sources)
        if item.sources is None:
            stream.next_due = max(stream.next_due + count / self.text_fps, item.collected)
        if stream.last_output is not None and not stream.closed:
            stream.sink.on_frames(stream.stamp([stream.last_output.image] * count, item.sources,
                                               time.monotonic()))

    def _fail(self, streams: list[Stream], message: str) -> None:
        for stream in streams:
            self.detach(stream)
            stream.sink.on_stopped(message)


def _as_chunk(output: object) -> list[np.ndarray]:
    """A pipeline's output for one request as a list of H×W×3 uint8 RGB frames."""
    if isinstance(output, np.ndarray) and output.dtype == np.uint8 and output.shape[-1:] == (3,):
        if output.ndim == 3:
            return [output]
        if output.ndim == 4 and output.shape[0] >= 1:
            return list(output)
    raise PipelineError("a pipeline must return an H×W×3 image or a T×H×W×3 chunk, uint8 RGB")


def _latencies(frames: list[OutputFrame], now: float, video: bool) -> list[float | None]:
    """Each frame's latency from its input's arrival to when the paced output releases it (a
    chunk's later frames leave later, at the input's frame spacing)."""
    first = frames[0]
    return [None if not video or f.source_arrived is None else
            now + float((f.pts - first.pts) * f.time_base) - f.source_arrived for f in frames]


def _chunk_wait(sources: list[InputFrame] | None) -> float | None:
    """How long the chunk's first frame waited for the rest of the chunk."""
    if not sources or len(sources) < 2:
        return None
    return sources[-1].arrived - sources[0].arrived
