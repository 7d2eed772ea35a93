"""The Ray hop alone: what one call to a pipeline worker costs when it carries a frame.

    python benchmarks/ray_hop.py --calls 200
    python benchmarks/ray_hop.py --calls 200 --inline-max 4194304   # frames inline, not plasma

Starts a local Ray cluster on loopback (no GPU), one echo actor (returns what it got, as a
worker returns an output frame of the input's size), and times round trips from the driver:

- `actor_small`: a call with a few bytes each way (Ray's floor per call);
- `actor_frame`: a 512² uint8 RGB frame each way (786 KB), one call per frame;
- `actor_chunk4`: a 4×512²×3 chunk each way (video pipelines consume chunks);
- `actor_batch4`: four sessions' frames in one call (how a front batches per worker), per frame;
- `actor_async`: `await actor.echo.remote(frame)` from an asyncio loop (the front's loop);
- `serve_frame`: a Ray Serve deployment handle call with the frame (`.remote(...).result()`);
- `engine_shared`: LiveV2V's own hop (`RayEngine.run` → `PipelineActor`, a passthrough
  pipeline), one session's 512² frame per round through shared memory, as between a front and
  an actor on one machine: the round trip minus the actor's engine time;
- `engine_store`: the same with the frame inside the call (LIVEV2V_RAY_SHARED_MEMORY=0), as
  between machines;
- `engine_shared_batch4`: four sessions' frames per round, shared memory, per frame.

The echo does no work, so each figure is the hop's overhead. Prints one line per measurement and
one JSON line. The machine may be shared: run with `taskset` and note the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # before benchmarks/, whose pipeline.py is not the package


def _summary(samples_s: list[float], per: int = 1) -> dict[str, float]:
    ms = sorted(s * 1000 / per for s in samples_s)
    return {"p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "n": len(ms)}


def _time(call: Callable[[], Any], calls: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def _engine_rounds(frame: np.ndarray, shared: bool, sessions: int, calls: int) -> list[float]:
    """Rounds through LiveV2V's Ray engine: each round trip minus the actor's engine time."""
    import ray

    import pipeline.serving.ray_backend.front as backend
    from pipeline.base import LoadParams
    from pipeline.models.passthrough import PassthroughPipeline
    from pipeline.params import ParameterState, ParameterUpdate
    from pipeline.serving.engine import Job

    backend.SHARED_MEMORY = shared
    engine = backend.start_engines(workers=1, gpus_per_worker=0,
                                   name_prefix=f"hop-{'shm' if shared else 'store'}")[0]
    engine.load(PassthroughPipeline, LoadParams(), lambda *_: None)
    params = ParameterState(None).snapshot(ParameterUpdate())
    jobs = [Job(key=f"s{i}", frames=frame[None], size=frame.shape[:2], params=params, index=0)
            for i in range(sessions)]
    samples = []
    for index in range(calls + 10):
        began = time.perf_counter()
        results = engine.run(jobs)
        elapsed = time.perf_counter() - began
        assert results[0].chunk is not None and results[0].chunk.shape == (1, *frame.shape)
        if index >= 10:
            samples.append(elapsed - max(r.engine_s for r in results))
    ray.kill(engine.actor)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--inline-max", type=int, default=None,
                        help="Ray's max_direct_call_object_size (default: Ray's, 100 KiB): "
                             "objects up to it travel inside the call instead of via plasma")
    parser.add_argument("--no-serve", action="store_true")
    args = parser.parse_args()

    import ray

    system_config = ({"max_direct_call_object_size": args.inline_max}
                     if args.inline_max else None)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", _system_config=system_config)
    cluster_start_s = time.perf_counter() - started

    @ray.remote(num_cpus=0)
    class Echo:
        def echo(self, payload: Any) -> Any:
            return payload

        async def aecho(self, payload: Any) -> Any:
            return payload

    actor = Echo.remote()
    frame = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
    chunk = np.stack([frame] * 4)
    results: dict[str, Any] = {}

    def measure(name: str, call: Callable[[], Any], per: int = 1) -> None:
        results[name] = _summary(_time(call, args.calls), per)
        print(f"{name:14s} p50 {results[name]['p50_ms']:7.2f} ms  "
              f"p95 {results[name]['p95_ms']:7.2f} ms" + (f"  (per frame of {per})" if per > 1
                                                            else ""), flush=True)

    measure("actor_small", lambda: ray.get(actor.echo.remote(b"x")))
    measure("actor_frame", lambda: ray.get(actor.echo.remote(frame)))
    measure("actor_chunk4", lambda: ray.get(actor.echo.remote(chunk)), per=4)
    measure("actor_batch4", lambda: ray.get(actor.echo.remote([frame] * 4)), per=4)

    async def async_calls() -> list[float]:
        samples = []
        for index in range(args.calls + 10):
            began = time.perf_counter()
            await actor.echo.remote(frame)
            if index >= 10:
                samples.append(time.perf_counter() - began)
        return samples

    results["actor_async"] = _summary(asyncio.run(async_calls()))
    print(f"{'actor_async':14s} p50 {results['actor_async']['p50_ms']:7.2f} ms  "
          f"p95 {results['actor_async']['p95_ms']:7.2f} ms", flush=True)

    if not args.no_serve:
        from ray import serve

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        class EchoDeployment:
            def __call__(self, payload: Any) -> Any:
                return payload

        handle = serve.run(EchoDeployment.bind(), name="hop", route_prefix=None)
        measure("serve_frame", lambda: handle.remote(frame).result())
        serve.shutdown()

    for name, shared, sessions in (("engine_shared", True, 1), ("engine_store", False, 1),
                                   ("engine_shared_batch4", True, 4)):
        results[name] = _summary(_engine_rounds(frame, shared, sessions, args.calls), sessions)
        print(f"{name:14s} p50 {results[name]['p50_ms']:7.2f} ms  "
              f"p95 {results[name]['p95_ms']:7.2f} ms", flush=True)

    ray.shutdown()
    print(json.dumps({
        "benchmark": "ray_hop", "ray": ray.__version__, "size": args.size,
        "frame_bytes": frame.nbytes, "inline_max": args.inline_max,
        "cluster_start_s": round(cluster_start_s, 2), **results,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_1m": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()
