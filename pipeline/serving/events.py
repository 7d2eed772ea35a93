"""What the service reports as it works, for whoever watches (the server's metrics). Listeners
are called on the worker or loader thread: they must be quick and thread-safe."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchDone:
    """One worker round: every ready session's request, run by the engine in one go (it
    groups them into `Pipeline.process` calls by batch key, up to `max_batch_size`)."""

    pipeline_id: str
    size: int  # requests (sessions) in the round
    frames: int  # output frames (a chunk per request for video models)
    seconds: float  # the engine's time for the round (without the hop, for a Ray worker)
    ok: bool  # False when any request failed


@dataclass(frozen=True)
class LoadDone:
    """A load finished, loaded or failed."""

    pipeline_id: str
    seconds: float
    ok: bool


ServiceEvent = BatchDone | LoadDone
Listener = Callable[[ServiceEvent], None]
