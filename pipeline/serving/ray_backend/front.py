"""The front's side: `RayEngine` (the engine a worker thread calls, one per actor), and
`start_engines`, which connects to Ray and starts or finds the actors."""


from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pipeline.base import LoadParams, Pipeline, PipelineError, ProgressCallback
from pipeline.errors import PreviousKeptError
from pipeline.serving.engine import Job, JobResult, WorkerLost

from .actor import Answer, PipelineActor, SharedMemoryUnavailable, SharedRound
from .shared_frames import NoRoom, SharedBlock, pack, probe_token, unpack

log = logging.getLogger(__name__)

NAMESPACE = "livev2v"
PING_TIMEOUT_S = 5.0
SHARED_MEMORY = os.environ.get("LIVEV2V_RAY_SHARED_MEMORY", "1") != "0"
"""Frames through shared memory when the actor is on the front's machine (0: always inside the
call, e.g. to measure the difference)."""


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
        try:
            self.first_frames, self._version = self._get(ref)
        except RayTaskError as exc:
            if isinstance(exc.cause, PipelineError | PreviousKeptError):
                raise exc.cause from None  # the actor's words, not Ray's traceback of them
            raise
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
