"""The shared pipeline service: the loaded pipeline's id and state, and its workers.

One worker per device (`--devices cuda:0,cuda:1`; by default one), or per Ray actor
(`--backend ray`): each holds its own copy of the pipeline and the streams placed on it. A new
session goes to the least-loaded worker that has the pipeline loaded and stays there (its
state lives there); load/unload apply to every worker; status reports the overall state in
Scope's shape, plus each worker.

Threads: the event loop only calls the cheap, lock-guarded entry points (`load`, `status`,
`open_stream`, `Stream.push/update/close`); each worker has a loader thread and a worker thread
(pipeline/serving/worker.py).

Guarantee when a pipeline call fails: when a call raises (in `process`, `new_state`,
`batch_key`, or by returning a wrong count or a malformed output; in this process or in a Ray
actor), every session in that call gets `StreamSink.on_stopped` with the reason, exactly once,
from the worker thread before its next round (so within one second: nothing waits in between),
and no frame is handed to its sink after that. Sessions of the same round in other calls carry
on. A session ended by any other cause (unload, a failed load, a lost Ray worker) is told once
too.

Weights first: a load of a pipeline with hub files fetches what is not cached (once, for every
worker; `downloads`, which /models/status reports too) before any worker unloads what it runs,
so the previous pipeline keeps serving during the download, and still does when the download
cannot happen (disk too small, hub unreachable): the status is then `error` with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from pipeline import registry
from pipeline.base import LoadParams, Pipeline
from pipeline.errors import LoadingError, LoadInProgressError, NotLoadedError, UnsupportedModeError
from pipeline.params import Mode, ParameterUpdate
from pipeline.resources.hub import (
    DownloadInProgressError,
    DownloadProgress,
    HubModel,
    HubUnreachableError,
    ModelDownloadError,
    ModelDownloads,
    hub_offline,
    is_cached,
)
from pipeline.resources.loras import LoraError, LoraFolder, LoraParams, loaded_adapters
from pipeline.resources.paths import LocalPathPolicy

from .engine import Engine, LocalEngine
from .events import Listener
from .stream import Stream, StreamSink
from .worker import Status, Worker, WorkerStatus

log = logging.getLogger(__name__)


class PipelineStatus(BaseModel):
    status: Status
    pipeline_id: str | None
    load_params: dict[str, Any] | None
    error: str | None
    loading_stage: str | None
    progress: float | None
    loaded_lora_adapters: list[dict[str, Any]] = Field(
        default_factory=list, description="Scope's key: the LoRAs of the pipeline in force "
                                          "({path, scale, merge_mode}).")
    workers: list[WorkerStatus] = Field(default_factory=list)
    """Beyond Scope: each pipeline worker (device or Ray actor), its state and load."""
    download: DownloadProgress | None = None
    """Beyond Scope: while a load downloads its weights, the bytes, rate and files."""


class PipelineService:
    def __init__(self, *, devices: Sequence[str | None] | None = None,
                 engines: Sequence[Engine] | None = None, text_fps: float = 20.0,
                 idle_wait_s: float = 0.5, path_policy: LocalPathPolicy | None = None,
                 lora_folder: LoraFolder | None = None) -> None:
        """`devices`: one local worker per entry (None: the pipeline picks, as with one
        device). `engines`: workers on engines built elsewhere (the Ray backend's actors).
        `lora_folder`: where `load_params.loras` paths are looked up (None: no folder; only
        absolute paths the path policy allows)."""
        self.text_fps = text_fps
        self.path_policy = path_policy or LocalPathPolicy()
        self.lora_folder = lora_folder
        if engines is None:
            engines = [LocalEngine(device) for device in (devices or [None])]
        if not engines:
            raise ValueError("a pipeline service needs at least one worker")
        self.workers = [Worker(index, engine, text_fps=text_fps, idle_wait_s=idle_wait_s,
                               on_adopt=self._adopted)
                        for index, engine in enumerate(engines)]
        self._lock = threading.Lock()
        self._pipeline_id: str | None = None
        self._load_params: LoadParams | None = None
        self.downloads = ModelDownloads(self.hub_models_for)
        self._fetching: tuple[type[Pipeline], LoadParams] | None = None
        """A load whose weights are being fetched (the workers still run the previous one)."""
        self._fetch_failed: tuple[str, LoadParams, str] | None = None
        """(pipeline id, params, why) of a load whose weights could not be fetched."""
        self._fetched = threading.Event()
        self._fetched.set()

    # --- lifecycle ----------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Be told of every worker's rounds and loads (`events`), on their threads."""
        for worker in self.workers:
            worker.listeners.append(listener)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        for worker in self.workers:
            worker.stop(timeout)

    # --- loading ------------------------------------------------------------------------------

    def load(self, pipeline_id: str, load_params: dict[str, Any] | None = None) -> None:
        """Validate and start loading on every worker; status is `loading` when this returns.

        Raises UnknownPipelineError, pydantic.ValidationError, ForbiddenPathError,
        LoraError (a LoRA file missing, cut off or not a LoRA: refused before anything is
        unloaded), LoadInProgressError."""
        cls = registry.get(pipeline_id)
        if not cls.supports_lora and (load_params or {}).get("loras"):
            raise LoraError(f"Pipeline {cls.id!r} does not load LoRAs; load it without "
                            "`loras`, or pick a pipeline whose schema says supports_lora.")
        params = cls.Params.model_validate(load_params or {})
        for ref in params.local_refs():
            self.path_policy.check(ref)
        if isinstance(params, LoraParams) and params.loras:
            folder = self.lora_folder or LoraFolder(None, self.path_policy)
            params = folder.resolve_params(params)
        with self._lock:
            if self._fetching is not None:
                if self._fetching[0] is cls and self._fetching[1] == params:
                    return  # joins the download under way
                raise LoadInProgressError(f"Pipeline {self._fetching[0].id!r} is downloading its "
                                          "weights; try again when it is done.")
            same = self._pipeline_id == pipeline_id and self._load_params == params
            if same and all(w.state in ("loading", "loaded") for w in self.workers):
                # The same load again (after defaults; unknown keys are dropped) joins the
                # running one, or is a no-op: Scope's app posts it twice per Start.
                return
            if not same and any(w.state == "loading" for w in self.workers):
                raise LoadInProgressError(
                    f"Pipeline {self._pipeline_id!r} is loading; try again when it is done.")
            self._fetch_failed = None
            models = cls.hub_models(params)
            if models:
                self._fetching, self._fetched = (cls, params), threading.Event()
                threading.Thread(target=self._fetch_then_load, args=(cls, params, models),
                                 name=f"fetch-{pipeline_id}", daemon=True).start()
                return
            self._begin_load(cls, params, same)

    def _begin_load(self, cls: type[Pipeline], params: LoadParams, same: bool) -> None:
        """With the lock held: every worker (but those already on this load) starts loading."""
        self._pipeline_id, self._load_params = cls.id, params
        for worker in self.workers:
            if not (same and worker.state in ("loading", "loaded")):
                worker.begin_load(cls, params)  # the same load retries where it failed

    def hub_models_for(self, pipeline_id: str) -> list[HubModel]:
        """What a pipeline loads from the hub: with the load params of the load under way or in
        force when it is that pipeline, else with its defaults. Raises UnknownPipelineError."""
        cls = registry.get(pipeline_id)
        with self._lock:
            pending, current = self._fetching, (self._pipeline_id, self._load_params)
        if pending is not None and pending[0] is cls:
            return cls.hub_models(pending[1])
        if current[0] == pipeline_id and current[1] is not None:
            return cls.hub_models(current[1])
        return cls.hub_models()

    def _fetch_then_load(self, cls: type[Pipeline], params: LoadParams,
                         models: list[HubModel]) -> None:
        """The loader of a pipeline with hub files: its weights, then the workers' load."""
        done = self._fetched
        try:
            self._fetch_and_begin(cls, params, models)
        finally:
            done.set()

    def _fetch_and_begin(self, cls: type[Pipeline], params: LoadParams,
                         models: list[HubModel]) -> None:
        error: str | None = None
        try:
            self._fetch(cls.id, models)
        except HubUnreachableError as exc:  # the workers' load may find a cache, or says why
            log.warning("could not plan the download for %s: %s", cls.id, exc)
        except ModelDownloadError as exc:
            error = str(exc)
        except Exception as exc:  # reported as the load's error
            log.exception("fetching the weights of %s failed", cls.id)
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            if self._fetching is None or self._fetching[0] is not cls or (
                    self._fetching[1] is not params):
                return
            self._fetching = None
            if error is not None:
                log.error("loading %s failed before it started: %s", cls.id, error)
                self._fetch_failed = (cls.id, params, error)
                return
            same = self._pipeline_id == cls.id and self._load_params == params
            self._begin_load(cls, params, same)

    def _fetch(self, pipeline_id: str, models: list[HubModel]) -> None:
        """Download what is missing (or wait for the /models/download under way)."""
        for _ in range(3):  # a download started elsewhere may have been for other params
            if hub_offline() or all(is_cached(m) for m in models):
                return
            with contextlib.suppress(DownloadInProgressError):  # then wait for that one
                self.downloads.start(pipeline_id, models)
            self.downloads.wait(pipeline_id)
            failure = self.downloads.failure(pipeline_id)
            if failure is not None:
                raise failure

    def unload(self) -> None:
        """Free the loaded pipeline on every worker (GPU memory included); sessions get
        stream_stopped. Raises LoadInProgressError while a load runs."""
        with self._lock:
            if self._fetching is not None or any(w.state == "loading" for w in self.workers):
                raise LoadInProgressError("A pipeline is loading; unload it when it is done.")
            self._pipeline_id, self._load_params = None, None
            self._fetch_failed = None
        for worker in self.workers:
            worker.unload()

    def load_blocking(self, pipeline_id: str, load_params: dict[str, Any] | None = None,
                      timeout: float | None = None) -> PipelineStatus:
        """Load and wait for the outcome on every worker (start-up, tests, benchmarks)."""
        self.load(pipeline_id, load_params)
        started = time.monotonic()
        self._fetched.wait(timeout)
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        for worker in self.workers:
            worker.join_loader(timeout)
        return self.status()

    def adopt_remote(self) -> None:
        """Ray workers that other fronts loaded already: take their pipeline as ours."""
        for worker in self.workers:
            loaded = getattr(worker.engine, "loaded", None)
            found = loaded() if loaded is not None else None
            if found is None:
                continue
            pipeline_id, raw, first_frames = found
            cls = registry.get(pipeline_id)
            params = cls.Params.model_validate(raw)
            with self._lock:
                if self._pipeline_id is None:
                    self._pipeline_id, self._load_params = pipeline_id, params
            if self._pipeline_id == pipeline_id:
                worker.adopt(cls, params, first_frames)

    def _adopted(self, cls: type[Pipeline], params: LoadParams) -> None:
        """A worker follows a pipeline another front loaded on it: so does the service."""
        with self._lock:
            self._pipeline_id, self._load_params = cls.id, params

    def status(self) -> PipelineStatus:
        workers = [w.status() for w in self.workers]
        with self._lock:
            fetching, failed = self._fetching, self._fetch_failed
        if fetching is not None:
            cls, params = fetching
            download = self.downloads.progress(cls.id)
            if download is not None and download.is_downloading and download.text:
                stage = f"downloading weights: {download.text}"
            else:
                download, stage = None, "checking the model files"
            return PipelineStatus(
                status="loading", pipeline_id=cls.id, load_params=params.model_dump(),
                error=None, loading_stage=stage, workers=workers, download=download,
                progress=0.0 if download is None or not download.total_bytes else (
                    download.downloaded_bytes / download.total_bytes))
        if failed is not None:  # the previous pipeline (if any) still serves its sessions
            pipeline_id, params, why = failed
            return PipelineStatus(status="error", pipeline_id=pipeline_id,
                                  load_params=params.model_dump(), error=why,
                                  loading_stage=None, progress=None, workers=workers)
        states = [w.status for w in workers]
        error: str | None = None
        progress: float | None = None
        stage: str | None = None
        if "loaded" in states:  # sessions can start: on the loaded workers
            status, progress = "loaded", 1.0
            # a LoRA change that failed in place: still loaded, and why the change failed
            error = next((w.error for w in workers if w.status == "loaded" and w.error), None)
        elif "loading" in states:
            status = "loading"
            progress = sum(w.progress or 0.0 for w in workers) / len(workers)
            stage = next(w.loading_stage for w in workers if w.status == "loading")
        elif "error" in states:
            status = "error"
            error = _summary([w for w in workers if w.status == "error"], len(workers))
        else:
            status = "not_loaded"
        with self._lock:
            pipeline_id, params = self._pipeline_id, self._load_params
        return PipelineStatus(
            status=status, pipeline_id=pipeline_id,
            load_params=None if params is None else params.model_dump(), error=error,
            loading_stage=stage, progress=progress,
            loaded_lora_adapters=loaded_adapters(params) if status == "loaded" else [],
            workers=workers)

    @property
    def pipeline_class(self) -> type[Pipeline] | None:
        """The class of the pipeline loaded or loading, if any."""
        pipeline_id = self._pipeline_id
        return registry.get(pipeline_id) if pipeline_id else None

    @property
    def load_params(self) -> LoadParams | None:
        """The load parameters of the pipeline loaded or loading (LoRA paths resolved)."""
        return self._load_params

    def defaults_for(self, mode: Mode) -> ParameterUpdate:
        cls = self.pipeline_class
        defaults = cls.mode_defaults() if cls else {}
        return defaults.get(mode) or ParameterUpdate()

    # --- streams ------------------------------------------------------------------------------

    def open_stream(self, sink: StreamSink, *, offers_video: bool,
                    initial: ParameterUpdate | None = None, held: bool = False) -> Stream:
        """Attach a session to the least-loaded worker with the pipeline loaded. Raises
        NotLoadedError, LoadingError, UnsupportedModeError. A `held` stream gets no work
        until `Stream.release()` (its peer has not connected yet)."""
        with self._lock:
            ready = [w for w in self.workers if w.state == "loaded"]
            if not ready:
                if self._fetching is not None or any(w.state == "loading" for w in self.workers):
                    raise LoadingError("Pipeline is loading; retry shortly.")
                errors = [w.error for w in self.workers if w.error]
                if self._fetch_failed is not None:
                    errors.insert(0, self._fetch_failed[2])
                reason = f" The last load failed: {errors[0]}" if errors else ""
                raise NotLoadedError("Pipeline not loaded. Please load pipeline first." + reason)
            cls = ready[0].pipeline_class
            assert cls is not None
            wanted = initial.input_mode if initial else None
            if wanted is not None and wanted not in cls.modes:
                raise UnsupportedModeError(
                    f"Pipeline {cls.id!r} does not support input_mode {wanted!r} "
                    f"(supported: {', '.join(cls.modes)}).")
            if not offers_video and "text" not in cls.modes:
                raise UnsupportedModeError(
                    f"Pipeline {cls.id!r} needs input video (it has no text mode); "
                    "send a video track.")
            worker = min(ready, key=lambda w: (w.stream_count, w.index))
            return worker.attach(sink, offers_video=offers_video, initial=initial, held=held)

    @property
    def stream_count(self) -> int:
        return sum(w.stream_count for w in self.workers)

    @property
    def capacity_workers(self) -> int:
        """Workers that can take sessions now (at least 1, for the limit's arithmetic)."""
        return max(1, sum(w.state == "loaded" for w in self.workers))


def _summary(failed: list[WorkerStatus], total: int) -> str | None:
    if total == 1:
        return failed[0].error
    first = failed[0]
    return f"{len(failed)} of {total} workers failed; worker {first.index} ({first.device}): " \
           f"{first.error}"
