"""Event-loop lag under load: sessions streaming through `streamdiffusion` on the tiny model.

    python benchmarks/loop_lag.py --sessions 0,1,4 --seconds 15
    python benchmarks/loop_lag.py --server-cpus 0 --client-cpus 1

Builds the tiny random-weight SD model and TAESD of the tests (tests/tiny_models.py) into a
temporary folder, starts `python app.py --pipeline streamdiffusion` on them, and for each
session count streams pre-encoded numbered frames from that many aiortc clients. The server's
own lag probe is read two ways: every session's `stats` message (`event_loop_lag_ms`: the worst
lag over the last second, once a second) and `/metrics` (`livev2v_event_loop_lag_seconds`,
scraped every half second). The figures are the server's: the clients run in this process.

Prints one line per session count, then one JSON line with every figure and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pinning import cpu_set  # noqa: E402
from signaling.client import EncodedNumbers, LiveV2VClient  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.tiny_models import build_tiny_sd, build_tiny_taesd  # noqa: E402

TARGET_MS = 20.0


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)}\s+(\S+)", text, re.M)
    return float(found.group(1)) if found else None


def start_server(models: Path, size: int, cpus: set[int] | None,
                 max_sessions: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    load = {"model_id": str(build_tiny_sd(models / "sd")),
            "vae_id": str(build_tiny_taesd(models / "taesd")), "height": size, "width": size}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--pipeline", "streamdiffusion", "--load-params", json.dumps(load),
                             "--max-sessions", str(max_sessions), "--log-level", "warning"],
                            cwd=ROOT)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)  # before it starts its threads: they inherit it
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # torch + diffusers imports on a busy machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            status = httpx.get(f"{url}/api/v1/pipeline/status", timeout=5).json()
            if status["status"] == "loaded":
                return proc, url
            if status["status"] == "error":
                proc.kill()
                raise SystemExit(f"tiny model failed to load: {status['error']}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start")


async def measure(url: str, sessions: int, size: int, fps: float, seconds: float,
                  sequence: list[bytes]) -> dict[str, Any]:
    stats_lag: list[float] = []
    scraped_lag: list[float] = []
    received = [0] * sessions
    async with contextlib.AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        clients = [await stack.enter_async_context(LiveV2VClient(url, timeout_s=60))
                   for _ in range(sessions)]
        await asyncio.gather(*(c.connect(EncodedNumbers(sequence, fps=fps),
                                         {"denoising_step_list": [700]}) for c in clients))
        await asyncio.gather(*(c.recv(timeout_s=120) for c in clients))  # all flowing
        measuring = True

        async def count(i: int, client: LiveV2VClient) -> None:
            while measuring:
                with contextlib.suppress(asyncio.TimeoutError):
                    await client.recv(timeout_s=5)
                    received[i] += 1

        async def stats(client: LiveV2VClient) -> None:
            while measuring:
                with contextlib.suppress(asyncio.TimeoutError):
                    message = await client.message("stats", timeout_s=5)
                    if message.get("event_loop_lag_ms") is not None:
                        stats_lag.append(message["event_loop_lag_ms"])

        tasks = [asyncio.create_task(count(i, c)) for i, c in enumerate(clients)]
        tasks += [asyncio.create_task(stats(c)) for c in clients]
        text0 = (await http.get("/metrics")).text
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            await asyncio.sleep(0.5)
            lag = metric((await http.get("/metrics")).text, "livev2v_event_loop_lag_seconds")
            if lag is not None:
                scraped_lag.append(lag * 1000.0)
        elapsed = time.monotonic() - start
        text1 = (await http.get("/metrics")).text
        measuring = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)

    def delta(name: str) -> float | None:
        a, b = metric(text0, name), metric(text1, name)
        return None if a is None or b is None else b - a

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    cpu = delta("process_cpu_seconds_total")
    batches = delta('livev2v_pipeline_batch_size_count{pipeline="streamdiffusion"}')
    batch_sessions = delta('livev2v_pipeline_batch_size_sum{pipeline="streamdiffusion"}')
    batch_s = delta('livev2v_pipeline_batch_seconds_sum{pipeline="streamdiffusion"}')
    every = stats_lag + scraped_lag
    return {
        "sessions": sessions, "size": size, "fps_target": fps, "seconds": round(elapsed, 1),
        "lag_ms_p50": round(statistics.median(every), 1) if every else None,
        "lag_ms_p95": pct(every, 0.95), "lag_ms_max": pct(every, 1.0),
        "lag_samples": len(every),
        "under_target": None if not every else max(every) < TARGET_MS,
        "fps_out_per_session": round(sum(received) / elapsed / sessions, 2) if sessions else None,
        "server_cpu_cores": None if cpu is None else round(cpu / elapsed, 2),
        "mean_batch_size": None if not batches else round(batch_sessions / batches, 2),
        "mean_batch_ms": None if not batches else round(batch_s * 1000.0 / batches, 1),
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="0,4", help="comma-separated session counts")
    parser.add_argument("--size", type=int, default=64, help="the model's output size")
    parser.add_argument("--input-size", type=int, default=128, help="the clients' frame size")
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--server-cpus", help="pin the server, e.g. 0")
    parser.add_argument("--client-cpus", help="pin this client process, e.g. 1")
    args = parser.parse_args()
    client_cpus = cpu_set(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    counts = [int(x) for x in args.sessions.split(",")]
    sequence = EncodedNumbers.encode(args.input_size)
    with tempfile.TemporaryDirectory(prefix="livev2v-looplag-") as models:
        proc, url = start_server(Path(models), args.size, cpu_set(args.server_cpus),
                                 max(4, *counts))
        try:
            rows = []
            for n in counts:
                row = asyncio.run(measure(url, n, args.size, args.fps, args.seconds, sequence))
                rows.append(row)
                print(f"{n} session(s) streamdiffusion tiny {args.size}² "
                      f"(input {args.input_size}² @ {args.fps:g} fps): event-loop lag "
                      f"p50 {row['lag_ms_p50']} ms, p95 {row['lag_ms_p95']} ms, "
                      f"max {row['lag_ms_max']} ms ({row['lag_samples']} samples); "
                      f"{row['fps_out_per_session']} fps out per session, server "
                      f"{row['server_cpu_cores']} cores, batches of {row['mean_batch_size']} "
                      f"in {row['mean_batch_ms']} ms", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    load = os.getloadavg()
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    print(json.dumps({"benchmark": "loop_lag", "pipeline": "streamdiffusion (tiny)",
                      "machine": machine, "python": platform.python_version(),
                      "load_average_1m": round(load[0], 2), "server_cpus": args.server_cpus,
                      "client_cpus": args.client_cpus, "target_ms": TARGET_MS,
                      "results": rows}))


if __name__ == "__main__":
    main()
