"""The Ray backend: pipeline workers as Ray actors, placed on GPUs by Ray (`num_gpus`).

Imported only with `--backend ray` (Ray is an optional dependency: requirements-ray.txt).

Each actor runs a `LocalEngine` (the same code the local backend runs) in its own process. The
front (FastAPI + aiortc) keeps everything per session that the transport needs: the window of
input frames, parameters, pacing, stats. A round crosses the wire as one actor call per front
and worker, carrying every ready session's uint8 frames (T×H×W×3) and a parameter snapshot;
the answer carries uint8 chunks. When the actor runs on the front's machine, the frames go
through shared memory instead and the call carries only where they lie
(pipeline/shared_frames.py: ~1.5 ms instead of ~5 ms per 512² frame). Rounds from several
fronts that reach an actor while it is busy are merged into its next engine run, so sessions
batch together across fronts.

Why actors and not a Ray Serve deployment: a session's state (noise, KV caches) lives on one
worker for the session's life, and Serve's handles route each call to any replica; pinning would
mean one deployment per worker, which leaves Serve nothing to do. A Serve handle call also cost
more than an actor call here (benchmarks/ray_hop.py: 9.1 vs 5.6 ms p50 per 512² frame). Ray
restarts a dead actor process (`max_restarts`); the front then stops the sessions it had, and
loads the current pipeline on the new process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from .base import LoadParams, Pipeline, PipelineError, ProgressCallback
from .engine import Job, JobResult, LocalEngine, WorkerLost
from .shared_frames import (
    Mapped,
    NoRoom,
    SharedBlock,
    Slot,
    can_map,
    pack,
    probe_token,
    unpack,
)

log = logging.getLogger(__name__)

NAMESPACE = "livev2v"
PING_TIMEOUT_S = 5.0
COALESCE_S = 0.010
"""How long an actor holds a round for the other fronts streaming to it (their next round is
one round trip behind: without the wait, fronts would take turns instead of sharing batches)."""
ACTIVE_S = 0.5
"""A front that sent a round this recently is expected to send the next one."""
SHARED_MEMORY = os.environ.get("LIVEV2V_RAY_SHARED_MEMORY", "1") != "0"
"""Frames through shared memory when the actor is on the front's machine (0: always inside the
call, e.g. to measure the difference)."""


class SharedMemoryUnavailable(RuntimeError):
    """The actor cannot map the front's blocks (it was restarted on another machine)."""


@dataclass(frozen=True)
class SharedRound:
    """A round whose frames lie in the front's shared blocks."""

    inbound: str
    """The block holding the jobs' frames."""
    outbound: str
    """The block the actor writes the output chunks into."""
    slots: list[Slot | None]
    """Per job, where its frames lie (None: the job carries them, or has none)."""


@dataclass(frozen=True)
class Answer:
    results: list[JobResult]
    version: int
    """Of what the actor has loaded (a front learns that another front swapped the pipeline)."""
    slots: list[Slot | None] | None = None
    """Shared rounds: per result, where its chunk lies in the outbound block (None: the result
    carries it, as when the block was too small)."""
    needed: int = 0
    """Shared rounds: the bytes all the chunks needed in the outbound block."""


@dataclass(eq=False)  # compared by identity
class _Round:
    jobs: Sequence[Job]
    front: str
    done: threading.Event = field(default_factory=threading.Event)
    results: list[JobResult] | None = None
    error: Exception | None = None


class PipelineActor:
    """One pipeline worker in its own process (decorated with `ray.remote` on use)."""

    def __init__(self, device: str | None) -> None:
        self.incarnation = uuid.uuid4().hex  # a restarted process is a new incarnation
        self.engine = LocalEngine(device)
        self._progress: tuple[float, str] = (0.0, "starting")
        self._loaded: tuple[str, dict[str, Any]] | None = None
        self._version = 0  # bumps on every load and unload, from any front
        self._cond = threading.Condition()
        self._queue: list[_Round] = []
        self._fronts: dict[str, float] = {}  # front id → when its last round arrived
        self._mapped = Mapped()  # the shared blocks of fronts on this machine
        self._running = False  # a caller is running the engine (the others wait)

    def info(self) -> dict[str, Any]:
        """Where it runs and what it has loaded (fronts that join later adopt it)."""
        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        return {"pid": os.getpid(), "incarnation": self.incarnation,
                "host": socket.gethostname(),
                "node_ip": ray.util.get_node_ip_address(), "device": self.engine.device,
                "gpu_ids": list(gpus), "loaded": self._loaded, "version": self._version,
                "first_frames": self.engine.first_frames}

    def load(self, cls: type[Pipeline], params: LoadParams) -> tuple[int, int]:
        """Returns (first_frames, version)."""
        self._loaded = None
        self._progress = (0.0, "starting")
        try:  # other fronts' rounds wait for it (the engine's lock), then see the new version
            self.engine.load(cls, params, self._set_progress)
        except PipelineError:
            self._version += 1
            raise
        except Exception as exc:  # the message must survive the trip to the front
            self._version += 1
            raise PipelineError(f"{type(exc).__name__}: {exc}") from exc
        self._loaded = (cls.id, params.model_dump())
        self._version += 1
        return self.engine.first_frames, self._version

    def progress(self) -> tuple[float, str]:
        return self._progress

    def unload(self) -> int:
        self._loaded = None
        self._version += 1
        self.engine.close()
        return self._version

    def release(self, keys: Sequence[str]) -> None:
        self.engine.release(keys)

    def can_share(self, name: str, token: bytes) -> bool:
        """Whether this process can map the front's block `name` (same machine)."""
        return can_map(name, token)

    def run(self, jobs: Sequence[Job], front: str, shared: SharedRound | None = None) -> Answer:
        """A front's round; merged with the rounds of other fronts streaming at the same time."""
        outbound = None
        if shared is not None:
            try:
                inbound, outbound = self._mapped.buffers(front, [shared.inbound, shared.outbound])
            except (FileNotFoundError, OSError) as exc:
                raise SharedMemoryUnavailable(f"cannot map the front's frames: {exc}") from exc
            jobs = [job if slot is None else replace(job, frames=unpack(inbound, slot))
                    for job, slot in zip(jobs, shared.slots, strict=True)]
            del inbound
        results = self._run(jobs, front)
        if outbound is None:
            return Answer(results, self._version)
        slots, needed = pack(outbound, [result.chunk for result in results])
        results = [result if slot is None else replace(result, chunk=None)
                   for result, slot in zip(results, slots, strict=True)]
        return Answer(results, self._version, slots, needed)

    def _run(self, jobs: Sequence[Job], front: str) -> list[JobResult]:
        """Queue the round; the first caller to find the engine idle runs every queued round
        (its own and other fronts') in one engine call, so the common case, one front, runs in
        the calling thread without a hand-off to another thread."""
        pending = _Round(jobs, front)
        with self._cond:
            self._fronts[front] = time.monotonic()
            self._queue.append(pending)
            self._cond.notify_all()
            while not pending.done.is_set() and (self._running or pending not in self._queue):
                self._cond.wait()
            if not pending.done.is_set():  # lead: run what is queued
                self._running = True
                self._wait_for_fronts()
                rounds, self._queue = self._queue, []
        if not pending.done.is_set():
            try:
                self._execute(rounds)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()  # to the rounds run here, and to the next leader
        if pending.error is not None:
            raise pending.error
        return pending.results or []

    def _set_progress(self, fraction: float, stage: str) -> None:
        self._progress = (max(0.0, min(1.0, float(fraction))), stage)

    def _wait_for_fronts(self) -> None:
        """Hold (briefly) for the other active fronts' rounds. Called holding the condition."""
        deadline = time.monotonic() + COALESCE_S
        while True:
            now = time.monotonic()
            active = {f for f, seen in self._fronts.items() if now - seen < ACTIVE_S}
            waiting = {r.front for r in self._queue}
            if active <= waiting or now >= deadline:
                return
            self._cond.wait(deadline - now)

    def _execute(self, rounds: list[_Round]) -> None:
        jobs = [job for pending in rounds for job in pending.jobs]
        try:
            results = self.engine.run(jobs)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit must reach the fronts
            error = exc if isinstance(exc, Exception) else RuntimeError(
                f"Pipeline worker crashed: {type(exc).__name__}: {exc}")
            for pending in rounds:
                pending.error = error
                pending.done.set()
            return
        start = 0
        for pending in rounds:
            pending.results = results[start:start + len(pending.jobs)]
            start += len(pending.jobs)
            pending.done.set()


class RayEngine:
    """The front's side of one actor: the engine interface the worker thread calls."""

    remote = True

    def __init__(self, actor: Any, name: str) -> None:
        self.actor = actor
        self.name = name
        self.front = uuid.uuid4().hex  # this front, for the actor's merging of rounds
        self._incarnation: str | None = None  # the process that holds our pipeline
        self._version: int | None = None  # the actor's version of what this front loaded
        self._drifted = False
        self.first_frames = 1
        self.device = name
        self._blocks: tuple[SharedBlock, SharedBlock] | None = None  # frames in, chunks out
        self._probed = not SHARED_MEMORY  # whether sharing with this process was tried

    def describe(self) -> dict[str, Any]:
        return self._get(self.actor.info.remote(), PING_TIMEOUT_S)

    def loaded(self) -> tuple[str, dict[str, Any], int] | None:
        """What the actor has loaded (another front loaded it): (pipeline id, load params,
        first_frames); this front then treats that process as the one holding it."""
        info = self.describe()
        if not info.get("loaded"):
            return None
        self._incarnation = info["incarnation"]
        self._version, self._drifted = info["version"], False
        self.first_frames = int(info["first_frames"])
        pipeline_id, params = info["loaded"]
        return pipeline_id, params, self.first_frames

    def load(self, cls: type[Pipeline], params: LoadParams, progress: ProgressCallback) -> None:
        ref = self.actor.load.remote(cls, params)
        while not ray.wait([ref], timeout=0.25)[0]:
            with contextlib.suppress(GetTimeoutError, RayActorError):  # the load's result tells
                progress(*ray.get(self.actor.progress.remote(), timeout=PING_TIMEOUT_S))
        self.first_frames, self._version = self._get(ref)
        self._drifted = False
        self._incarnation = self.describe()["incarnation"]

    def run(self, jobs: Sequence[Job]) -> list[JobResult]:
        try:
            blocks = self._sharing()
            if blocks is not None:
                try:
                    return self._run_shared(jobs, *blocks)
                except (SharedMemoryUnavailable, NoRoom) as exc:
                    self._stop_sharing(exc)
            answer: Answer = self._get(self.actor.run.remote(list(jobs), self.front))
            self._note(answer.version)
            return answer.results
        except PipelineError:
            self.check()  # "nothing loaded" from a process that restarted between two checks
            raise

    def _run_shared(self, jobs: Sequence[Job], inbound: SharedBlock,
                    outbound: SharedBlock) -> list[JobResult]:
        frames = [job.frames for job in jobs]
        inbound.ensure(sum(f.nbytes for f in frames if f is not None))
        slots, _ = pack(inbound.buf, frames)
        wire = [job if slot is None else replace(job, frames=None)
                for job, slot in zip(jobs, slots, strict=True)]
        answer: Answer = self._get(self.actor.run.remote(
            wire, self.front, SharedRound(inbound.name, outbound.name, slots)))
        self._note(answer.version)
        results = [result if slot is None else replace(result, chunk=unpack(outbound.buf, slot))
                   for result, slot in zip(answer.results, answer.slots or [], strict=True)]
        try:
            outbound.ensure(answer.needed)  # a larger block for the next round's chunks
        except NoRoom as exc:  # this round is done: only the next ones go inside the calls
            self._stop_sharing(exc)
        return results

    @property
    def shares_memory(self) -> bool:
        """Whether rounds go through shared memory (the actor is on this machine)."""
        return self._blocks is not None

    def _sharing(self) -> tuple[SharedBlock, SharedBlock] | None:
        """This front's blocks when the actor's process can map them (asked once per process)."""
        if not self._probed:
            self._probed = True
            try:
                blocks = SharedBlock(), SharedBlock()  # frames in, chunks out
            except NoRoom as exc:
                self._stop_sharing(exc)
                return None
            token = probe_token()
            blocks[0].buf[:len(token)] = token
            self._blocks = blocks
            if self._get(self.actor.can_share.remote(blocks[0].name, token), PING_TIMEOUT_S):
                log.info("%s is on this machine: frames go through shared memory", self.name)
            else:  # the usual case across machines: not worth a warning
                log.info("%s is on another machine: frames go inside the calls", self.name)
                self._stop_sharing()
        return self._blocks

    def _stop_sharing(self, why: object = None) -> None:
        """Frames go inside the calls from now on; `why` goes to the log as a warning."""
        if why is not None:
            log.warning("%s: %s; frames go inside the calls", self.name, why)
        for block in self._blocks or ():
            block.close()
        self._blocks = None

    def release(self, keys: Sequence[str]) -> None:
        self.actor.release.remote(list(keys))  # fire and forget: a dead actor has no state

    def close(self) -> None:
        self._version = self._get(self.actor.unload.remote(), PING_TIMEOUT_S * 6)
        self._drifted = False

    def drifted(self) -> bool:
        """Another front loaded or unloaded a pipeline on this actor since this front did."""
        return self._drifted

    def _forget_process(self) -> None:
        """The process is gone or new: nothing it reports says another front changed it (and
        the next one may run on another machine: sharing memory is asked again)."""
        self._incarnation, self._version, self._drifted = None, None, False
        self._stop_sharing()
        self._probed = not SHARED_MEMORY

    def _note(self, version: int) -> None:
        if self._version is not None and version != self._version:
            self._drifted = True

    def check(self) -> None:
        """Raises WorkerLost when the actor's process is gone, or is not the one that loaded
        the pipeline (Ray restarted it: its state and pipeline are gone)."""
        info = self._get(self.actor.info.remote(), PING_TIMEOUT_S)
        self._note(info["version"])
        if self._incarnation is not None and info["incarnation"] != self._incarnation:
            self._forget_process()  # reported once; the worker reloads it
            raise WorkerLost(f"The pipeline worker {self.name} restarted.")

    def _get(self, ref: Any, timeout: float | None = None) -> Any:
        try:
            return ray.get(ref, timeout=timeout)
        except RayActorError as exc:
            self._forget_process()
            raise WorkerLost(f"The pipeline worker {self.name} died or restarted "
                             f"({type(exc).__name__}).") from exc
        except GetTimeoutError as exc:
            self._forget_process()
            raise WorkerLost(f"The pipeline worker {self.name} stopped answering.") from exc


def connect(address: str | None) -> None:
    """Join the cluster at `address` ('auto': the local one started with `ray start`), or start
    a local one; a no-op when this process is connected already (tests, notebooks)."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=NAMESPACE, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING)


def start_engines(*, address: str | None = None, workers: int | None = None,
                  gpus_per_worker: float | None = None,
                  name_prefix: str = "livev2v-worker") -> list[RayEngine]:
    """The actors `livev2v-worker-0..N-1` (created, or joined when another front made them).

    Defaults: one worker per GPU of the cluster, each with one GPU; one CPU worker when the
    cluster has no GPU."""
    connect(address)
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if cluster_gpus >= 1 else 0.0
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus_per_worker) if gpus_per_worker else 1)
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    actor_class = ray.remote(PipelineActor)
    engines = []
    for index in range(workers):
        name = f"{name_prefix}-{index}"
        actor = actor_class.options(
            name=name, namespace=NAMESPACE, get_if_exists=True, num_gpus=gpus_per_worker,
            num_cpus=1, max_concurrency=64, max_restarts=-1, max_task_retries=0,
            lifetime="detached",  # shared by every front: outlives the one that made it
        ).remote(device)
        engines.append(RayEngine(actor, name))
    deadline = time.monotonic() + 120
    for engine in engines:  # fail early with a readable message when Ray cannot place one
        ref = engine.actor.info.remote()
        remaining = max(1.0, deadline - time.monotonic())
        try:
            ray.get(ref, timeout=remaining)
        except GetTimeoutError:
            raise RuntimeError(
                f"Ray could not start {engine.name} within 120 s: the cluster has "
                f"{ray.cluster_resources()} and each worker asks for {gpus_per_worker} GPU and "
                "1 CPU.") from None
    return engines
