"""What OSC control costs the server: a controller sending at a steady rate to live sessions.

    python benchmarks/osc.py --sessions 1,4 --rates 0,60,600,2000 --seconds 5

Starts `python app.py --pipeline cpu-effect` (OSC on its HTTP port, the loopback default),
connects aiortc clients streaming 128² numbered frames at 20 fps, and for each rate sends
`/scope/noise_scale` from python-osc for the given time, as a TouchDesigner OSC Out CHOP with
one moving channel would (600/s is ten channels sent on every frame at 60 fps). Reads the
server's CPU time (`process_cpu_seconds_total`) and event-loop lag (`/metrics`), and counts the
`parameters_applied` notifications each client got (changes to a session within 30 ms are
merged, so this stays bounded whatever the rate).

Prints one line per (sessions, rate), then one JSON line with every figure and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pythonosc.udp_client import SimpleUDPClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from signaling.client import LiveV2VClient, NumberedFrames  # noqa: E402
from tests.conftest import free_port, wait_until_loaded  # noqa: E402


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}\s+(\S+)", text, re.M)
    return float(found.group(1)) if found else float("nan")


async def run(url: str, port: int, sessions: int, rate: int, seconds: float) -> dict[str, Any]:
    clients = [LiveV2VClient(url) for _ in range(sessions)]
    try:
        for client in clients:
            await client.connect(NumberedFrames(size=128, fps=20, tint=(200, 200, 200)),
                                 {"prompts": [{"text": "blue"}]})
        for client in clients:
            await client.recv()
            await client.applied()
        osc = SimpleUDPClient("127.0.0.1", port)
        async with httpx.AsyncClient(base_url=url) as http:
            before = (await http.get("/metrics")).text
            start = time.monotonic()
            lags: list[float] = []
            sent = 0
            while (now := time.monotonic()) < start + seconds:
                due = int((now - start) * rate)
                while sent < due:
                    osc.send_message("/scope/noise_scale", (sent % 100) / 100)
                    sent += 1
                await asyncio.sleep(0.005)
                if int((now - start) * 2) > len(lags):  # twice a second
                    lags.append(metric((await http.get("/metrics")).text,
                                       "livev2v_event_loop_lag_seconds"))
            elapsed = time.monotonic() - start
            after = (await http.get("/metrics")).text
        cpu = (metric(after, "process_cpu_seconds_total")
               - metric(before, "process_cpu_seconds_total")) / elapsed
        notified = []
        for client in clients:
            count = 0
            while not client.messages.empty():
                count += client.messages.get_nowait().get("type") == "parameters_applied"
            notified.append(count / elapsed)
        return {"sessions": sessions, "rate": rate, "sent": sent,
                "server_cpu_per_s": round(cpu, 3),
                "loop_lag_max_ms": round(max(lags, default=0.0) * 1000, 1),
                "notifications_per_session_per_s": round(max(notified, default=0.0), 1)}
    finally:
        for client in clients:
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,4")
    parser.add_argument("--rates", default="0,60,600,2000")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port),
                             "--pipeline", "cpu-effect", "--log-level", "warning"], cwd=ROOT)
    results = []
    try:
        wait_until_loaded(url, timeout_s=600, proc=proc)
        for sessions in (int(s) for s in args.sessions.split(",")):
            for rate in (int(r) for r in args.rates.split(",")):
                result = asyncio.run(run(url, port, sessions, rate, args.seconds))
                results.append(result)
                print(f"{sessions} session(s), {rate:5d} msg/s: server CPU "
                      f"{result['server_cpu_per_s']:.2f} s/s, loop lag max "
                      f"{result['loop_lag_max_ms']} ms, "
                      f"{result['notifications_per_session_per_s']} notifications/s/session",
                      flush=True)
    finally:
        proc.terminate()
        proc.wait(15)
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip()
    print(json.dumps({"benchmark": "osc", "pipeline": "cpu-effect", "size": 128, "fps": 20,
                      "seconds": args.seconds, "machine": machine,
                      "python": platform.python_version(), "results": results}))


if __name__ == "__main__":
    main()
