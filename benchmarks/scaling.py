"""Scaling benchmark: the same WebRTC sessions through one worker, two device workers, and two
Ray actors, with glass-to-glass latency, frames/s per worker, and the per-frame cost of the hop.

    python benchmarks/scaling.py --sessions 2 --size 512 --fps 20 --seconds 10
    python benchmarks/scaling.py --modes ray,ray-store --server-cpus 0 --client-cpus 1

Modes: `local` (one worker, as by default), `devices` (`--devices cpu,cpu`: two workers in the
server's process), `ray` (`--backend ray`: two CPU actors on a local Ray cluster on loopback;
frames cross in shared memory, as they do whenever an actor is on the front's machine),
`ray-store` (the same with LIVEV2V_RAY_SHARED_MEMORY=0: frames inside the calls, through Ray's
object store, as they cross between machines).
Each mode's server (the front) runs in a child process, as `app.py` would, and the aiortc
clients in this one: they do not share a GIL, as a server and its browsers never do.
`--server-cpus` / `--client-cpus` pin them apart; Ray's processes (started here before pinning)
and its actors may run on every core. `front_cpu_ms_per_frame` is the server process's
CPU time (all its threads; not Ray's processes or actors) per frame the clients sent, from its
/proc counters over the whole measurement, connections included. The default
pipeline is `bench-copy` (defined here): `process` returns a copy of its input, so the frames
take the whole engine path (RGB conversion, a `process` call; with Ray the hop) at no model cost.
(`passthrough` would skip all of it: the service hands its decoded frames straight back.) For
Ray, `hop_ms` is each round's round trip minus the actor's own time (serialising uint8 frames,
the object store, the call), per round (a round carries every ready session of a front).

Prints one line per mode, then a JSON line with every figure and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import serve_in_background  # noqa: E402
from benchmarks.pinning import cpu_set  # noqa: E402
from pipeline import FrameRequest, Pipeline  # noqa: E402
from pipeline.registry import register  # noqa: E402
from signaling.client import LiveV2VClient, NumberedFrames, read_number  # noqa: E402
from tests.conftest import free_port  # noqa: E402


@register
class CopyPipeline(Pipeline):
    """Returns a copy of its input: the engine path without a model."""

    id = "bench-copy"
    name = description = "benchmark: copy"
    supports_prompts = False
    max_batch_size = 64
    max_sessions = 32

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [np.array(request.frames, copy=True) for request in batch]


async def session(url: str, size: int, fps: float, seconds: float) -> dict[str, Any]:
    """One client: numbered frames out, each returned frame's glass-to-glass time."""
    source = NumberedFrames(size=size, fps=fps)
    latencies: list[float] = []
    seen: set[int] = set()
    async with LiveV2VClient(url) as client:
        await client.connect(source)
        await client.recv(timeout_s=60)  # connected and flowing; measure from here
        start, first_sent = time.monotonic(), len(source.sent)
        while time.monotonic() - start < seconds:
            frame = await client.recv(timeout_s=30)
            now = time.monotonic()
            number = read_number(frame.to_ndarray(format="rgb24"))
            if number in source.sent and number not in seen:
                seen.add(number)
                latencies.append((now - source.sent[number]) * 1000.0)
        elapsed = time.monotonic() - start
        sent = len(source.sent) - first_sent
        sent_total = len(source.sent)
        await client.stop()
    return {"latencies": latencies, "received": len(seen), "sent": sent, "elapsed": elapsed,
            "sent_total": sent_total}


async def measure(url: str, sessions: int, size: int, fps: float,
                  seconds: float) -> dict[str, Any]:
    results = await asyncio.gather(*(session(url, size, fps, seconds) for _ in range(sessions)))
    latencies = [x for r in results for x in r["latencies"]]
    elapsed = max(r["elapsed"] for r in results)
    return {"p50_ms": percentile(latencies, 0.5), "p95_ms": percentile(latencies, 0.95),
            "received_fps_per_session": round(sum(r["received"] for r in results)
                                              / elapsed / sessions, 2),
            "sent_fps_per_session": round(sum(r["sent"] for r in results) / elapsed / sessions, 2),
            "sent_total": sum(r["sent_total"] for r in results)}



def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def serve(mode: str, port: int, pipeline: str, ray_address: str | None) -> None:
    """The server of one mode, in its own process (`--serve`): prints its URL once loaded, and
    on a line on stdin, the Ray hop of every round and exits."""
    settings: dict[str, Any] = {"host": "127.0.0.1", "port": port, "pipeline": pipeline}
    if mode == "devices":
        settings["devices"] = ["cpu", "cpu"]
    elif mode.startswith("ray"):
        settings.update(backend="ray", ray_workers=2, ray_gpus_per_worker=0,
                        ray_address=ray_address)
    server = serve_in_background(**settings)
    service = server.app.state.service
    deadline = time.monotonic() + 120
    while service.status().status != "loaded":
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mode}: pipeline did not load: {service.status()}")
        time.sleep(0.1)
    for worker in service.workers:
        worker.overheads.clear()
    print(server.url.replace("localhost", "127.0.0.1"), flush=True)
    sys.stdin.readline()
    print(json.dumps([h for w in service.workers for h in w.overheads]), flush=True)
    server.stop()


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One mode: its server in a child process (pinned to --server-cpus), the clients here."""
    ray_address = None
    if mode.startswith("ray"):
        import ray

        # Started from this process before it is pinned: Ray's processes (and the actors)
        # may run on every core; the server joins the cluster.
        context = ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False,
                           log_to_driver=False, namespace="livev2v",
                           _node_ip_address="127.0.0.1")
        ray_address = context.address_info["gcs_address"]
    every_cpu = os.sched_getaffinity(0)
    client_cpus, server_cpus = cpu_set(args.client_cpus), cpu_set(args.server_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    env = {**os.environ, "LIVEV2V_RAY_SHARED_MEMORY": "0" if mode == "ray-store" else "1"}
    command = [sys.executable, __file__, "--serve", mode, "--port", str(free_port()),
               "--pipeline", args.pipeline] + (["--ray-address", ray_address]
                                               if ray_address else [])
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env)
    if server_cpus:
        os.sched_setaffinity(child.pid, server_cpus)
    try:
        assert child.stdout is not None and child.stdin is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"{mode}: the server did not start (exit {child.wait()})")
        rates: list[list[float]] = []
        sampling = threading.Event()

        def sample() -> None:
            with httpx.Client(base_url=url) as http:
                while not sampling.wait(1.0):
                    workers = http.get("/api/v1/pipeline/status").json().get("workers", [])
                    while len(rates) < len(workers):
                        rates.append([])
                    for index, status in enumerate(workers):
                        if status["sessions"]:
                            rates[index].append(status["fps_out"])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu_before = _cpu_seconds(child.pid)
        try:
            result = asyncio.run(measure(url, args.sessions, args.size, args.fps, args.seconds))
            front_cpu_s = _cpu_seconds(child.pid) - cpu_before
        finally:
            sampling.set()
            sampler.join()
        child.stdin.write("report\n")
        child.stdin.flush()
        hops = json.loads(child.stdout.readline())
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
        if mode.startswith("ray"):
            import ray

            ray.shutdown()
        os.sched_setaffinity(0, every_cpu)
    return {
        "mode": mode, "workers": len(rates),
        "g2g_p50_ms": result["p50_ms"], "g2g_p95_ms": result["p95_ms"],
        "sent_fps_per_session": result["sent_fps_per_session"],
        "received_fps_per_session": result["received_fps_per_session"],
        "fps_per_worker": [round(statistics.mean(r), 2) if r else 0.0 for r in rates],
        "hop_p50_ms": percentile(hops, 0.5), "hop_p95_ms": percentile(hops, 0.95),
        "hop_rounds": len(hops),
        "front_cpu_ms_per_frame": round(front_cpu_s * 1000 / max(1, result["sent_total"]), 2),
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of a process on this machine (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="local,devices,ray,ray-store")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--pipeline", default="bench-copy")
    parser.add_argument("--server-cpus", help="pin the server (the front), e.g. 0")
    parser.add_argument("--client-cpus", help="pin the clients (this process), e.g. 1")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child: one mode's server
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ray-address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.pipeline, args.ray_address)
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    for mode in modes:
        row = run_mode(mode, args)
        rows.append(row)
        print(f"{mode:8s} g2g p50 {row['g2g_p50_ms']} ms p95 {row['g2g_p95_ms']} ms  "
              f"fps/worker {row['fps_per_worker']}  hop p50 {row['hop_p50_ms']} ms "
              f"p95 {row['hop_p95_ms']} ms  front CPU {row['front_cpu_ms_per_frame']} ms/frame",
              flush=True)
    print(json.dumps({
        "benchmark": "scaling", "pipeline": args.pipeline, "sessions": args.sessions,
        "size": args.size, "fps": args.fps, "seconds": args.seconds, "results": rows,
        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
        "wire_mb_per_s_per_session": round(args.size * args.size * 3 * args.fps * 2 / 1e6, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_1m": round(os.getloadavg()[0], 2)},
    }))


if __name__ == "__main__":
    main()
