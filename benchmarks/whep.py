"""WHEP fan-out benchmark: one WHIP ingest at 512², 20 fps into `python app.py --pipeline
passthrough`, watched by 0, 1, 4 and 8 WHEP viewers; the server's CPU per ingested frame for
each count. The viewers share one encode of the output (signaling/fanout.py), so the first
viewer costs an encode and every further one only packetization, SRTP and its socket I/O.

    python benchmarks/whep.py --viewers 0,1,4,8 --seconds 10
    python benchmarks/whep.py --server-cpus 0 --client-cpus 1

The ingest sends frames VP8-encoded once, up front (no encoder in the client); each viewer is
an aiortc client, which decodes what it receives: on a small machine the clients' decoding
competes with the server (pin them apart). Prints a line per viewer count, then a JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.pinning import cpu_set  # noqa: E402
from benchmarks.transport import CpuCounter, start_server  # noqa: E402
from signaling.client import EncodedNumbers, WhipWhepClient  # noqa: E402


def frames_out(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(re.search(r"^livev2v_frames_out_total (\S+)$", text, re.M).group(1))


async def count_frames(viewer: WhipWhepClient, counts: list[int], index: int) -> None:
    while True:
        try:
            await viewer.recv(timeout_s=30)
        except Exception:  # noqa: BLE001 - the viewer closed or stalled
            return
        counts[index] += 1


async def measure(url: str, viewers: int, sequence: list[bytes], fps: float, seconds: float,
                  server_cpu: CpuCounter) -> dict[str, Any]:
    ingest = WhipWhepClient(url)
    clients = [WhipWhepClient(url) for _ in range(viewers)]
    counts = [0] * viewers
    tasks = []
    try:
        await ingest.publish(EncodedNumbers(sequence, fps=fps))
        for i, client in enumerate(clients):
            await client.play(ingest.session_id)
            await client.recv(timeout_s=30)
            tasks.append(asyncio.create_task(count_frames(client, counts, i)))
        deadline = time.monotonic() + 30
        while frames_out(url) < fps:  # the ingest is flowing
            assert time.monotonic() < deadline, "the ingest never produced frames"
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # settle: keyframes sent, rates steady
        cpu0, out0, got0, client0 = (server_cpu.read(), frames_out(url), list(counts),
                                     time.process_time())
        start = time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, out1, got1, client1 = (server_cpu.read(), frames_out(url), list(counts),
                                     time.process_time())
        elapsed = time.monotonic() - start
    finally:
        for task in tasks:
            task.cancel()
        for client in (*clients, ingest):
            if client.location:
                await client.stop()
            await client.close()
    frames = out1 - out0
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    received = [b - a for a, b in zip(got0, got1, strict=True)]
    return {
        "viewers": viewers,
        "frames_ingested_per_s": round(frames / elapsed, 1),
        "server_cpu_ms_per_frame": None if cpu is None or not frames
        else round(cpu * 1000 / frames, 2),
        "server_cpu_cores": None if cpu is None else round(cpu / elapsed, 2),
        "viewer_fps_min": round(min(received) / elapsed, 1) if received else None,
        "viewer_fps_mean": round(sum(received) / len(received) / elapsed, 1) if received
        else None,
        "client_cpu_cores": round((client1 - client0) / elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="0,1,4,8", help="comma-separated viewer counts")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--server-cpus", help="pin the server started here, e.g. 0")
    parser.add_argument("--client-cpus", help="pin this client process, e.g. 1")
    args = parser.parse_args()
    client_cpus = cpu_set(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    proc, url = start_server(cpu_set(args.server_cpus))
    server_cpu = CpuCounter(proc.pid, url)
    sequence = EncodedNumbers.encode(args.size)
    rows = []
    try:
        for n in (int(x) for x in args.viewers.split(",")):
            row = asyncio.run(measure(url, n, sequence, args.fps, args.seconds, server_cpu))
            rows.append(row)
            print(f"{n} viewer(s), {args.size}x{args.size}@{args.fps:g}: server "
                  f"{row['server_cpu_ms_per_frame']} ms CPU/frame ({row['server_cpu_cores']} "
                  f"cores), ingest {row['frames_ingested_per_s']} fps, viewers min "
                  f"{row['viewer_fps_min']} / mean {row['viewer_fps_mean']} fps, client "
                  f"{row['client_cpu_cores']} cores", flush=True)
    finally:
        proc.terminate()
        proc.wait(15)
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    print(json.dumps({"benchmark": "whep", "pipeline": "passthrough", "machine": machine,
                      "size": args.size, "fps": args.fps, "server_cpus": args.server_cpus,
                      "client_cpus": args.client_cpus, "results": rows}))


if __name__ == "__main__":
    main()
