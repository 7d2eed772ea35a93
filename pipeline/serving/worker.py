"""A pipeline worker: one thread, one engine (its own copy of the loaded pipeline, in this
process or in a Ray actor), and the streams the service placed on it.

Threads: the event loop calls the cheap entry points (`attach`, `detach`, `wake`, `status`);
the loader thread drives `engine.load`; the worker thread is the only caller of `engine.run`.
Results leave through each stream's sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from pipeline import registry
from pipeline.base import LoadParams, Pipeline, PipelineError
from pipeline.errors import PreviousKeptError
from pipeline.params import Mode, ParameterUpdate

from .engine import Engine, Job, JobResult, WorkerLost
from .events import BatchDone, Listener, LoadDone, ServiceEvent
from .frames import InputFrame, OutputFrame
from .stats import RateMeter
from .stream import Stream

log = logging.getLogger(__name__)

Status = Literal["not_loaded", "loading", "loaded", "error"]
HEALTH_CHECK_S = 1.0
"""How often an idle worker asks a remote engine whether its process is still there."""
MAX_AUTO_RELOADS = 3
"""Times a worker whose process restarted reloads the pipeline by itself before giving up."""


class WorkerStatus(BaseModel):
    index: int
    device: str | None
    """`cuda:1`, `cpu`; for Ray workers their actor name and where it runs."""
    status: Status
    error: str | None
    loading_stage: str | None
    progress: float | None
    sessions: int
    fps_out: float
    """Frames/s this worker produced over the last 2 s (all its sessions)."""
    process_ms: float | None
    """Pipeline time of its recent rounds (EMA)."""
    overhead_ms: float | None
    """Ray workers: a round's round trip minus the actor's own time (EMA): the hop's cost."""
    shared_memory: bool | None = None
    """Ray workers: whether frames cross through shared memory (the actor is on this machine)
    or inside the calls; None before the first round, and for local workers."""


@dataclass
class _Work:
    stream: Stream
    mode: Mode
    sources: list[InputFrame] | None
    """The chunk of input frames, oldest first; None in text mode."""
    collected: float


class Worker:
    def __init__(self, index: int, engine: Engine, *, text_fps: float = 20.0,
                 idle_wait_s: float = 0.5, label: str | None = None,
                 on_adopt: Callable[[type[Pipeline], LoadParams], None] | None = None) -> None:
        self.index = index
        self._on_adopt = on_adopt  # tells the service what another front loaded here
        self.engine = engine
        self.text_fps = text_fps
        self.label = label or engine.device
        self._remote = bool(getattr(engine, "remote", False))
        self._idle_wait = idle_wait_s
        self._cond = threading.Condition()
        self._streams: list[Stream] = []
        self._released: list[str] = []
        self._status: Status = "not_loaded"
        self._cls: type[Pipeline] | None = None
        self._params: LoadParams | None = None
        self._serving: tuple[type[Pipeline] | None, LoadParams | None] | None = None
        self._error: str | None = None
        self._stage: str | None = None
        self._progress: float | None = None
        self._generation = 0  # bumps on every load: stream state from before is gone
        self._loader: threading.Thread | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lost = False
        self._reloads = 0
        self._next_check = 0.0
        self._rate = RateMeter()
        self._process_ms: float | None = None
        self._overhead_ms: float | None = None
        self.listeners: list[Listener] = []  # told of every round and load (`events`)
        self.overheads: deque[float] = deque(maxlen=4096)
        """Remote workers: each round's hop cost in ms (round trip minus the actor's time)."""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"pipeline-worker-{self.index}",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in (self._thread, self._loader):
            if thread is not None:
                thread.join(timeout)
        if not self._remote:  # a Ray actor is released with the front's connection
            self.engine.close()

    def wake(self) -> None:
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._stopping:
            log.error("pipeline worker %d died; restarting it", self.index)  # _run catches all
            self._thread = None
            self.start()
        with self._cond:
            self._cond.notify_all()

    # --- loading (driven by the service) ------------------------------------------------------

    def begin_load(self, cls: type[Pipeline], params: LoadParams) -> None:
        with self._cond:
            # What serves now: kept if the load turns out to be a LoRA change that fails.
            self._serving = (self._cls, self._params) if self._status == "loaded" else None
            self._status, self._error = "loading", None
            self._cls, self._params = cls, params
            self._stage, self._progress = "waiting for the frames in flight", 0.0
            self._loader = threading.Thread(target=self._load, args=(cls, params),
                                            name=f"pipeline-load-{self.index}", daemon=True)
            self._loader.start()

    def join_loader(self, timeout: float | None = None) -> None:
        loader = self._loader
        if loader is not None:
            loader.join(timeout)

    def unload(self) -> None:
        """Free the pipeline; the worker's sessions get stream_stopped."""
        with self._cond:
            self._status, self._error, self._progress, self._stage = "not_loaded", None, None, None
            self._cls, self._params = None, None
            self._generation += 1
            streams = self._take_streams()
        for stream in streams:
            stream.stop("The pipeline was unloaded.")
        try:
            self.engine.close()  # after the round in flight
        except WorkerLost as exc:
            self._mark_lost(str(exc))

    def adopt(self, cls: type[Pipeline], params: LoadParams, first_frames: int) -> None:
        """A remote worker that another front loaded: use what it has."""
        with self._cond:
            self._cls, self._params = cls, params
            self._status, self._progress = "loaded", 1.0
            self.engine.first_frames = first_frames
            self._generation += 1
            self._cond.notify_all()

    def _tell(self, event: ServiceEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a broken watcher must not break the pipeline
                log.exception("worker %d: listener failed", self.index)

    def _load(self, cls: type[Pipeline], params: LoadParams) -> None:
        started = time.perf_counter()
        try:
            self.engine.load(cls, params, self._set_progress)
        except PreviousKeptError as exc:
            self._tell(LoadDone(cls.id, time.perf_counter() - started, ok=False))
            self._keep_serving(cls, params, str(exc))
            return
        except Exception as exc:  # any failure becomes a status the user can read
            message = str(exc) if isinstance(exc, PipelineError | WorkerLost) else (
                f"{type(exc).__name__}: {exc}")
            log.exception("worker %d: loading pipeline %s failed", self.index, cls.id)
            self._tell(LoadDone(cls.id, time.perf_counter() - started, ok=False))
            with self._cond:
                if self._cls is not cls or self._params is not params:
                    return  # superseded by another load or an unload
                self._status, self._error = "error", message
                self._stage, self._progress = None, None
                self._lost = isinstance(exc, WorkerLost)
                streams = self._take_streams()
            for stream in streams:
                stream.stop(f"Pipeline {cls.id!r} failed to load: {message}")
            return
        with self._cond:
            if self._stopping or self._cls is not cls or self._params is not params:
                return
            self._generation += 1
            self._status, self._stage, self._progress = "loaded", None, 1.0
            self._lost = False
            # Receive-only sessions cannot continue on a pipeline without a text mode.
            stranded = [s for s in self._streams if not s.offers_video and "text" not in cls.modes]
            for stream in stranded:
                self._streams.remove(stream)
            self._cond.notify_all()
        for stream in stranded:
            stream.stop(f"Pipeline {cls.id!r} has no text mode; this session sends "
                                   "no video. Reconnect with a video input.")
        self._tell(LoadDone(cls.id, time.perf_counter() - started, ok=True))
        log.info("worker %d (%s): pipeline %s loaded", self.index, self.label, cls.id)

    def _keep_serving(self, cls: type[Pipeline], params: LoadParams, message: str) -> None:
        """A LoRA change failed in place: the pipeline as it was serves on, sessions too; the
        status says loaded (with what was loaded before) and why the change failed."""
        with self._cond:
            if self._cls is not cls or self._params is not params or self._serving is None:
                return  # superseded by another load or an unload
            self._cls, self._params = self._serving
            self._status, self._stage, self._progress = "loaded", None, 1.0
            self._error = f"The LoRA change failed; still serving the previous LoRAs: {message}"
            self._cond.notify_all()
        log.warning("worker %d: %s", self.index, self._error)
        if self._on_adopt is not None and self._cls is not None and self._params is not None:
            self._on_adopt(self._cls, self._params)

    def _set_progress(self, fraction: float, stage: str) -> None:
        with self._cond:
            self._progress = max(0.0, min(1.0, float(fraction)))
            self._stage = stage

    # --- state --------------------------------------------------------------------------------

    @property
    def state(self) -> Status:
        return self._status

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def progress(self) -> float | None:
        return self._progress

    @property
    def stage(self) -> str | None:
        return self._stage

    def status(self) -> WorkerStatus:
        with self._cond:
            return WorkerStatus(
                index=self.index, device=self.label, status=self._status, error=self._error,
                loading_stage=self._stage if self._status == "loading" else None,
                progress=self._progress if self._status in ("loading", "loaded") else None,
                sessions=len(self._streams), fps_out=round(self._rate.rate(time.monotonic()), 2),
                process_ms=_round(self._process_ms), overhead_ms=_round(self._overhead_ms),
                shared_memory=getattr(self.engine, "shares_memory", None)
                if self._overhead_ms is not None else None)

    @property
    def pipeline_class(self) -> type[Pipeline] | None:
        return self._cls

    @property
    def first_chunk_frames(self) -> int:
        """Input frames the loaded pipeline takes on a session's first call (or after a reset)."""
        return self.engine.first_frames

    @property
    def load_params(self) -> LoadParams | None:
        """The load parameters of the pipeline loaded (or loading) here."""
        return self._params

    def defaults_for(self, mode: Mode) -> ParameterUpdate:
        defaults = self._cls.mode_defaults() if self._cls else {}
        return defaults.get(mode) or ParameterUpdate()

    # --- streams ------------------------------------------------------------------------------

    @property
    def stream_count(self) -> int:
        with self._cond:
            return len(self._streams)

    def attach(self, sink: Any, *, offers_video: bool,
               initial: ParameterUpdate | None, held: bool = False) -> Stream:
        stream = Stream(self, sink, offers_video=offers_video, initial=initial, held=held)
        with self._cond:
            stream.window.set_capacity(self.engine.first_frames)
            self._streams.append(stream)
            self._cond.notify_all()
        return stream

    def detach(self, stream: Stream) -> None:
        with self._cond:
            if stream in self._streams:
                self._streams.remove(stream)
                self._released.append(stream.id)  # its state goes on the next round

    def _take_streams(self) -> list[Stream]:
        """Remove every stream (the caller stops them, outside the lock)."""
        streams = list(self._streams)
        self._streams.clear()
        self._released.extend(s.id for s in streams)
        return streams

    # --- the worker thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                work, released, generation = self._wait_for_work()
            if work is None:
                return
            try:
                if released:
                    self.engine.release(released)
                if self._remote and not work and time.monotonic() >= self._next_check:
                    self._health_check()
                if work:
                    self._round(work, generation)
            except WorkerLost as exc:
                self._mark_lost(str(exc))
            except BaseException as exc:
                log.exception("pipeline worker %d caught %s", self.index, type(exc).__name__)
                self._fail([item.stream for item in work or []],
                           f"Pipeline worker crashed: {type(exc).__name__}: {exc}")

    def _wait_for_work(self) -> tuple[list[_Work] | None, list[str], int]:
        """Block (holding the condition) until there is something to do. (None, ...) = stop."""
        while not self._stopping:
            now = time.monotonic()
            timeout = self._idle_wait
            work: list[_Work] = []
            if self._status == "loaded" and self._cls is not None:
                work, next_due = self._collect(self._cls, now)
                if next_due is not None:
                    timeout = min(timeout, max(0.0, next_due - now))
            released, self._released = self._released, []
            if self._remote:
                timeout = min(timeout, max(0.0, self._next_check - now))
            if work or released or (self._remote and now >= self._next_check):
                return work, released, self._generation
            self._cond.wait(timeout)
        return None, [], self._generation

    def _collect(self, cls: type[Pipeline], now: float) -> tuple[list[_Work], float | None]:
        work: list[_Work] = []
        next_due: float | None = None
        for stream in self._streams:
            if stream.held:
                continue
            mode = stream.resolve_mode(cls.modes, now)
            if mode == "video":
                fresh = stream.generation != self._generation or stream.params.reset_pending
                wanted = self.engine.first_frames if fresh else stream.next_frames
                stream.stats.dropped(stream.window.set_capacity(wanted))
                sources = stream.window.take()
                if sources is not None:
                    work.append(_Work(stream, mode, sources, now))
            elif mode == "text":
                stream.window.clear()  # input is not used in text mode
                if now >= stream.next_due:
                    work.append(_Work(stream, mode, None, now))
                next_due = stream.next_due if next_due is None else min(next_due, stream.next_due)
        return work, next_due

    def _round(self, work: list[_Work], generation: int) -> None:
        """Every ready session's chunk through the engine in one call (it batches them)."""
        items: list[_Work] = []
        jobs: list[Job] = []
        params = self._params
        for item in work:
            stream = item.stream
            if stream.params.paused:
                self._repeat_last(item)
                continue
            if (self._cls is not None and self._cls.passes_input_through
                    and item.sources is not None
                    and all(source.native is not None for source in item.sources)):
                self._pass_through(item, generation)
                continue
            try:
                frames = (None if item.sources is None
                          else np.stack([s.decode() for s in item.sources]))
            except Exception as exc:  # noqa: BLE001 - a broken frame stops only its session
                self._fail([stream], f"Could not read the input frame: {exc}")
                continue
            size = (frames.shape[1:3] if frames is not None else
                    (params.height, params.width) if params is not None else (512, 512))
            jobs.append(Job(key=stream.id, frames=frames, size=(int(size[0]), int(size[1])),
                            params=stream.params.snapshot(self.defaults_for(item.mode)),
                            index=stream.produced))
            items.append(item)
        if not jobs:
            return
        started = time.perf_counter()
        pipeline_id = self._cls.id if self._cls is not None else "?"
        try:
            results = self.engine.run(jobs)
        except PipelineError as exc:
            self._tell(BatchDone(pipeline_id, len(jobs), 0, time.perf_counter() - started, False))
            self._fail([item.stream for item in items], f"Pipeline error: {exc}")
            self._follow_other_fronts()
            return
        round_s = time.perf_counter() - started
        if len(results) != len(items):
            raise PipelineError(f"the engine answered {len(results)} of {len(items)} jobs")
        engine_s = max((r.engine_s for r in results), default=0.0)
        done = [r for r in results if r.chunk is not None]
        self._tell(BatchDone(pipeline_id, len(jobs), sum(len(r.chunk) for r in done),
                             engine_s or round_s, ok=len(done) == len(results)))
        self._process_ms = _ema(self._process_ms, engine_s * 1000.0)
        if self._remote:
            hop_ms = (round_s - engine_s) * 1000.0
            self.overheads.append(hop_ms)
            self._overhead_ms = _ema(self._overhead_ms, hop_ms)
        now = time.monotonic()
        self._follow_other_fronts()
        for item, result in zip(items, results, strict=True):
            if result.chunk is None:
                self._fail([item.stream], result.error or "Pipeline error")
                continue
            self._deliver(item, result, generation, now)

    def _deliver(self, item: _Work, result: JobResult, generation: int, now: float) -> None:
        assert result.chunk is not None
        self._emit(item, list(result.chunk), result.next_frames, result.process_s, generation,
                   now)

    def _pass_through(self, item: _Work, generation: int) -> None:
        """The output is the input (`Pipeline.passes_input_through`): the transport's own frames
        go back as they came, with no RGB round trip and no engine call (nor a Ray hop)."""
        assert item.sources is not None
        item.stream.params.snapshot(self.defaults_for(item.mode))  # advances as a call would
        self._emit(item, [source.native for source in item.sources], len(item.sources), 0.0,
                   generation, time.monotonic())

    def _emit(self, item: _Work, chunk: list[Any], next_frames: int, process_s: float,
              generation: int, now: float) -> None:
        """Stamp one session's output, count it, and hand it to the session."""
        stream = item.stream
        frames = stream.stamp(chunk, item.sources, now)
        stream.produced += len(frames)
        stream.last_output = frames[-1]
        stream.generation, stream.next_frames = generation, next_frames
        stream.stats.dropped(stream.window.set_capacity(next_frames))
        if item.sources is None:  # text mode: the next call is due when this chunk has played
            stream.next_due = max(stream.next_due + len(frames) / self.text_fps, item.collected)
        stream.stats.produced(_latencies(frames, now, item.sources is not None),
                              process_s, chunk_wait_s=_chunk_wait(item.sources))
        with self._cond:  # status() reads the meter from the event loop
            for _ in frames:
                self._rate.tick(now)
        stream.deliver(frames)

    def _repeat_last(self, item: _Work) -> None:
        """Paused: the output repeats the last frame, at the input's pace."""
        stream = item.stream
        count = 1 if item.sources is None else len(item.sources)
        if item.sources is None:
            stream.next_due = max(stream.next_due + count / self.text_fps, item.collected)
        if stream.last_output is not None:
            stream.deliver(stream.stamp([stream.last_output.image] * count, item.sources,
                                        time.monotonic()))

    def _fail(self, streams: list[Stream], message: str) -> None:
        """Stop the streams of a failed call, on this thread, before the next round: each is
        detached (no later round takes it) and told once (`Stream.stop`: nothing after)."""
        for stream in streams:
            self.detach(stream)
            stream.stop(message)

    # --- remote workers: death and recovery ---------------------------------------------------

    def _health_check(self) -> None:
        self._next_check = time.monotonic() + HEALTH_CHECK_S
        check: Callable[[], None] | None = getattr(self.engine, "check", None)
        if check is None:
            return
        check()  # raises WorkerLost
        self._follow_other_fronts()
        with self._cond:
            reload = (self._lost and self._status == "error" and self._cls is not None
                      and self._params is not None and self._reloads < MAX_AUTO_RELOADS)
            if reload:
                self._reloads += 1
        if reload and self._cls is not None and self._params is not None:
            log.info("worker %d is back; loading %s on it again", self.index, self._cls.id)
            self.begin_load(self._cls, self._params)

    def _follow_other_fronts(self) -> None:
        """A shared Ray worker that another front swapped or unloaded: take what it has now
        (sessions carry on with the new pipeline), or stop the sessions if it has nothing."""
        drifted: Callable[[], bool] | None = getattr(self.engine, "drifted", None)
        loaded: Callable[[], Any] | None = getattr(self.engine, "loaded", None)
        if drifted is None or loaded is None or self._status != "loaded" or not drifted():
            return
        found = loaded()
        if found is None:
            with self._cond:
                self._status, self._error, self._progress, self._stage = (
                    "not_loaded", None, None, None)
                self._cls, self._params = None, None
                self._generation += 1
                streams = self._take_streams()
            for stream in streams:
                stream.stop("The pipeline was unloaded (by another front).")
            return
        pipeline_id, raw, first_frames = found
        cls = registry.get(pipeline_id)
        params = cls.Params.model_validate(raw)
        log.info("worker %d: another front loaded %s here; following it", self.index, cls.id)
        self.adopt(cls, params, first_frames)
        if self._on_adopt is not None:
            self._on_adopt(cls, params)

    def _mark_lost(self, message: str) -> None:
        """The engine's process is gone: stop this worker's sessions (they may reconnect and
        land on a live worker); the health check reloads the pipeline once Ray restarted it."""
        log.error("worker %d: %s", self.index, message)
        with self._cond:
            was_loaded = self._status == "loaded"
            self._status, self._error, self._lost = "error", message, True
            self._stage = self._progress = None
            self._generation += 1
            streams = self._take_streams()
            self._released.clear()  # the state died with the process
            if was_loaded:
                self._reloads = 0
            self._next_check = time.monotonic() + HEALTH_CHECK_S
        for stream in streams:
            stream.stop(f"{message} Reconnect to continue on another worker.")


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


def _ema(old: float | None, new: float, k: float = 0.2) -> float:
    return new if old is None else old + k * (new - old)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
