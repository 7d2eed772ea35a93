"""Glass-to-glass transport benchmark: aiortc clients send numbered frames through a server
running `passthrough` and time each frame's return; the server's own CPU time is reported per
frame, apart from the client's.

    python benchmarks/transport.py --sessions 1,4 --size 512 --fps 20 --seconds 10
    python benchmarks/transport.py --server-cpus 0 --client-cpus 1 --sessions 4,8,16

Starts `python app.py --pipeline passthrough` on a free port unless `--url` is given (then the
server's CPU comes from `--server-pid`, or from `process_cpu_seconds_total` on its `/metrics`).
The clients send frames that were VP8-encoded once, up front, and read each returned frame's
number from its luma plane, so that the client side stays cheap and does not queue: it reports
its own CPU use, and a row whose client ran out of CPU says so (`client_saturated`).

Prints one line per session count, then a JSON line with every figure.
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pinning import cpu_set  # noqa: E402
from signaling.client import (  # noqa: E402
    EncodedNumbers,
    LiveV2VClient,
    NumberedFrames,
    read_frame_number,
)
from tests.conftest import free_port  # noqa: E402

CLIENT_SATURATED = 0.85
"""Client CPU (fraction of the cores it may use) above which its own figures are suspect."""


@dataclass
class Probe:
    """One session: sends numbered frames, matches every returned frame to its send time."""

    client: LiveV2VClient
    source: EncodedNumbers | NumberedFrames
    latencies: list[float] = field(default_factory=list)
    received: int = 0
    sent_at_start: int = 0
    measuring: bool = False

    async def run(self) -> None:
        matched: set[tuple[int, float]] = set()
        while True:
            try:
                frame = await self.client.recv()
            except Exception:  # noqa: BLE001 - the session ended or stalled
                return
            now = time.monotonic()
            number = read_frame_number(frame)
            sent = self.source.sent.get(number)
            if not self.measuring or sent is None or (number, sent) in matched:
                continue
            matched.add((number, sent))
            self.received += 1
            self.latencies.append((now - sent) * 1000.0)

    @property
    def sent(self) -> int:
        return _sent(self.source) - self.sent_at_start


def _sent(source: EncodedNumbers | NumberedFrames) -> int:
    return source.count


class CpuCounter:
    """A process's CPU seconds (user + system): /proc for a local pid, else /metrics."""

    def __init__(self, pid: int | None, url: str | None) -> None:
        self.pid, self.url = pid, url

    def read(self) -> float | None:
        if self.pid is not None:
            with contextlib.suppress(OSError, ValueError):
                fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if self.url is not None:
            with contextlib.suppress(httpx.HTTPError):
                text = httpx.get(f"{self.url}/metrics", timeout=5).text
                found = re.search(r"^process_cpu_seconds_total\s+(\S+)", text, re.M)
                if found:
                    return float(found.group(1))
        return None


async def measure(url: str, sessions: int, size: int, fps: float, seconds: float,
                  stock_client: bool, encode_live: bool, sequence: list[bytes],
                  server_cpu: CpuCounter, client_cores: int, fresh: bool) -> dict[str, Any]:
    probes: list[Probe] = []
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(sessions):
            client = await stack.enter_async_context(
                LiveV2VClient(url, low_latency=not stock_client, timeout_s=30))
            source = NumberedFrames(size=size, fps=fps) if encode_live else \
                EncodedNumbers(sequence, fps=fps)
            probes.append(Probe(client, source))
        await asyncio.gather(*(p.client.connect(p.source) for p in probes))
        tasks = [asyncio.create_task(p.run()) for p in probes]
        # Connected and flowing; measure from here, on every session at once.
        await asyncio.gather(*(p.client.recv(timeout_s=30) for p in probes))
        for p in probes:
            p.measuring, p.sent_at_start = True, _sent(p.source)
        cpu0, client0, start = server_cpu.read(), time.process_time(), time.monotonic()
        fresh_ms = None
        if fresh:  # a new session joining a loaded server: how long to its first frame?
            await asyncio.sleep(seconds / 2)
            fresh_ms = await _fresh_session(url, size, fps, sequence)
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        elapsed = time.monotonic() - start
        cpu1, client1 = server_cpu.read(), time.process_time()
        for p in probes:
            p.measuring = False
        sent = sum(p.sent for p in probes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(p.client.stop() for p in probes), return_exceptions=True)
    latencies = sorted(x for p in probes for x in p.latencies)
    received = sum(p.received for p in probes)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1)

    client_busy = (client1 - client0) / elapsed / client_cores
    server_cpu_s = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return {
        "sessions": sessions, "size": size, "fps_target": fps,
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": pct(0.95), "latency_ms_max": pct(1.0),
        "fps_sent_per_session": round(sent / elapsed / sessions, 2),
        "fps_received_per_session": round(received / elapsed / sessions, 2),
        "dropped": max(0, sent - received),
        "server_cpu_ms_per_frame": None if server_cpu_s is None or not sent
        else round(server_cpu_s * 1000.0 / sent, 2),
        "server_cpu_cores": None if server_cpu_s is None else round(server_cpu_s / elapsed, 2),
        "client_cpu_ms_per_frame": round((client1 - client0) * 1000.0 / max(sent, 1), 2),
        "client_cpu_cores": round((client1 - client0) / elapsed, 2),
        "client_saturated": client_busy > CLIENT_SATURATED,
        "fresh_session_first_frame_ms": fresh_ms,
    }


async def _fresh_session(url: str, size: int, fps: float, sequence: list[bytes]) -> float | None:
    started = time.monotonic()
    try:
        async with LiveV2VClient(url, timeout_s=30) as client:
            await client.connect(EncodedNumbers(sequence, fps=fps))
            await client.recv(timeout_s=30)
            took = (time.monotonic() - started) * 1000.0
            await client.stop()
            return round(took, 1)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        print(f"fresh session failed: {exc}", file=sys.stderr)
        return None



def start_server(cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--pipeline", "passthrough", "--log-level", "warning",
                             "--max-sessions", "200"], cwd=ROOT)
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)  # before it starts its threads: they inherit it
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/v1/pipeline/status").json()["status"] == "loaded":
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running server (its pipeline: passthrough)")
    parser.add_argument("--server-pid", type=int,
                        help="with --url: the server's pid, for its CPU time (same machine)")
    parser.add_argument("--sessions", default="1,4", help="comma-separated session counts")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--server-cpus", help="pin the server started here, e.g. 0")
    parser.add_argument("--client-cpus", help="pin this client process, e.g. 1")
    parser.add_argument("--fresh-session", action="store_true",
                        help="halfway through each row, time a new session to its first frame")
    parser.add_argument("--encode-live", action="store_true",
                        help="draw and VP8-encode every frame in the client (costs the client "
                             "about as much CPU as the server) instead of sending pre-encoded "
                             "frames")
    parser.add_argument("--stock-client", action="store_true",
                        help="receive with stock aiortc, which holds each frame until the next "
                             "one starts (adds one frame interval); default: like a browser")
    args = parser.parse_args()
    client_cpus = cpu_set(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    proc, url = (None, args.url) if args.url else start_server(cpu_set(args.server_cpus))
    server_cpu = CpuCounter(proc.pid if proc else args.server_pid, url)
    sequence = EncodedNumbers.encode(args.size)
    cores = len(os.sched_getaffinity(0))
    try:
        rows = []
        for n in (int(x) for x in args.sessions.split(",")):
            row = asyncio.run(measure(url, n, args.size, args.fps, args.seconds,
                                      args.stock_client, args.encode_live, sequence,
                                      server_cpu, cores, args.fresh_session))
            rows.append(row)
            fresh = row["fresh_session_first_frame_ms"]
            print(f"{n} session(s) {args.size}x{args.size}@{args.fps:g}: "
                  f"p50 {row['latency_ms_p50']} ms, p95 {row['latency_ms_p95']} ms, "
                  f"sent {row['fps_sent_per_session']} fps, "
                  f"received {row['fps_received_per_session']} fps, dropped {row['dropped']}; "
                  f"server {row['server_cpu_ms_per_frame']} ms CPU/frame "
                  f"({row['server_cpu_cores']} cores), "
                  f"client {row['client_cpu_ms_per_frame']} ms/frame "
                  f"({row['client_cpu_cores']} cores"
                  f"{', SATURATED' if row['client_saturated'] else ''})"
                  + ("" if fresh is None else f"; a fresh session's first frame in {fresh} ms"),
                  flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    print(json.dumps({"benchmark": "transport", "pipeline": "passthrough", "machine": machine,
                      "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
                      "client": ("stock aiortc" if args.stock_client else "marker release")
                      + (", live encode" if args.encode_live else ", pre-encoded"),
                      "results": rows}))


if __name__ == "__main__":
    main()
