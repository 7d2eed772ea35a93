"""The Ray backend: pipeline workers as Ray actors, placed on GPUs by Ray (`num_gpus`).

Imported only with `--backend ray` (Ray is an optional dependency: requirements-ray.txt).

Each actor runs a `LocalEngine` (the same code the local backend runs) in its own process. The
front (FastAPI + aiortc) keeps everything per session that the transport needs: the window of
input frames, parameters, pacing, stats. A round crosses the wire as one actor call per front
and worker, carrying every ready session's uint8 frames (T×H×W×3) and a parameter snapshot;
the answer carries uint8 chunks. When the actor runs on the front's machine, the frames go
through shared memory instead and the call carries only where they lie
(`shared_frames`: ~1.5 ms instead of ~5 ms per 512² frame). Rounds from several
fronts that reach an actor while it is busy are merged into its next engine run, so sessions
batch together across fronts.

Why actors and not a Ray Serve deployment: a session's state (noise, KV caches) lives on one
worker for the session's life, and Serve's handles route each call to any replica; pinning would
mean one deployment per worker, which leaves Serve nothing to do. A Serve handle call also cost
more than an actor call here (benchmarks/ray_hop.py: 9.1 vs 5.6 ms p50 per 512² frame). Ray
restarts a dead actor process (`max_restarts`); the front then stops the sessions it had, and
loads the current pipeline on the new process.

Modules: `front` (the front's side: `RayEngine`, `start_engines`), `actor` (the actor's
side: `PipelineActor`), `shared_frames` (the shared-memory hop).
"""

from .front import NAMESPACE, RayEngine, start_engines

__all__ = ["NAMESPACE", "RayEngine", "start_engines"]
