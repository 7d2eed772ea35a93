"""Glass-to-glass transport benchmark: aiortc clients send numbered frames through a server
running `passthrough` and time each frame's return.

    python benchmarks/transport.py --sessions 1,4 --size 512 --fps 20 --seconds 10

Starts `python app.py --pipeline passthrough` on a free port unless `--url` is given. Prints
one line per session count, then a JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signaling.client import LiveV2VClient, NumberedFrames, read_number  # noqa: E402


async def run_session(url: str, size: int, fps: float, seconds: float,
                      stock_client: bool) -> dict[str, Any]:
    source = NumberedFrames(size=size, fps=fps)
    latencies: list[float] = []
    seen: set[int] = set()
    async with LiveV2VClient(url, low_latency=not stock_client) as client:
        await client.connect(source)
        await client.recv()  # connected and flowing; measure from here
        start = time.monotonic()
        first_sent = len(source.sent)
        while time.monotonic() - start < seconds:
            frame = await client.recv()
            now = time.monotonic()
            number = read_number(frame.to_ndarray(format="rgb24"))
            if number in source.sent and number not in seen:
                seen.add(number)
                latencies.append((now - source.sent[number]) * 1000.0)
        elapsed = time.monotonic() - start
        sent = len(source.sent) - first_sent
        await client.stop()
    return {"latencies": latencies, "received": len(seen), "sent": sent, "elapsed": elapsed}


async def measure(url: str, sessions: int, size: int, fps: float, seconds: float,
                  stock_client: bool) -> dict[str, Any]:
    results = await asyncio.gather(*(run_session(url, size, fps, seconds, stock_client)
                                     for _ in range(sessions)))
    latencies = sorted(x for r in results for x in r["latencies"])
    sent = sum(r["sent"] for r in results)
    received = sum(r["received"] for r in results)
    elapsed = max(r["elapsed"] for r in results)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {
        "sessions": sessions, "size": size, "fps_target": fps,
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else None,
        "latency_ms_p95": pct(0.95) if latencies else None,
        "fps_sent_per_session": round(sent / elapsed / sessions, 2),
        "fps_received_per_session": round(received / elapsed / sessions, 2),
        "dropped": max(0, sent - received),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--pipeline", "passthrough", "--log-level", "warning"], cwd=ROOT)
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
    parser.add_argument("--sessions", default="1,4", help="comma-separated session counts")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stock-client", action="store_true",
                        help="receive with stock aiortc, which holds each frame until the next "
                             "one starts (adds one frame interval); default: like a browser")
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else start_server()
    try:
        rows = []
        for n in (int(x) for x in args.sessions.split(",")):
            row = asyncio.run(measure(url, n, args.size, args.fps, args.seconds,
                                      args.stock_client))
            rows.append(row)
            print(f"{n} session(s) {args.size}x{args.size}@{args.fps:g}: "
                  f"p50 {row['latency_ms_p50']} ms, p95 {row['latency_ms_p95']} ms, "
                  f"sent {row['fps_sent_per_session']} fps, "
                  f"received {row['fps_received_per_session']} fps, dropped {row['dropped']}",
                  flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(15)
    machine = f"{platform.machine()} {platform.processor() or ''} {_cores()} cores".strip()
    print(json.dumps({"benchmark": "transport", "pipeline": "passthrough", "machine": machine,
                      "client": "stock aiortc" if args.stock_client else "marker release",
                      "results": rows}))


def _cores() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
