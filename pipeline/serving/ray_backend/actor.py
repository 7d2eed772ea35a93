"""The actor's side: one pipeline worker in its own process, running a `LocalEngine` and
merging the rounds of several fronts into one engine run."""


from __future__ import annotations

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

from pipeline.base import LoadParams, Pipeline, PipelineError
from pipeline.errors import PreviousKeptError
from pipeline.serving.engine import Job, JobResult, LocalEngine

from .shared_frames import Mapped, Slot, can_map, pack, unpack

log = logging.getLogger(__name__)

COALESCE_S = 0.010
"""How long an actor holds a round for the other fronts streaming to it (their next round is
one round trip behind: without the wait, fronts would take turns instead of sharing batches)."""
ACTIVE_S = 0.5
"""A front that sent a round this recently is expected to send the next one."""


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
        """Returns (first_frames, version). Raises PipelineError, or PreviousKeptError when a
        LoRA change failed in place (the pipeline as it was serves on: same version)."""
        previous, self._loaded = self._loaded, None
        self._progress = (0.0, "starting")
        try:  # other fronts' rounds wait for it (the engine's lock), then see the new version
            self.engine.load(cls, params, self._set_progress)
        except PreviousKeptError:
            self._loaded = previous  # unchanged: no front may take it for another pipeline
            raise
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
