"""`python app.py` as a user runs it: options, start-up, and a clean Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import httpx
import pytest

from signaling.client import LiveV2VClient, NumberedFrames
from tests.conftest import ROOT, free_port, wait_until_loaded

SECRET = "never-in-the-log-7f3a"


def test_help_lists_the_options() -> None:
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for option in ("--host", "--port", "--pipeline", "--cors-origins", "--max-sessions"):
        assert option in out


async def test_ctrl_c_closes_every_session_and_exits_cleanly() -> None:
    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - a quick fork; the server is what we test
        [sys.executable, "app.py", "--port", str(port), "--pipeline", "passthrough",
         "--api-key", SECRET],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_until_loaded, url, 90, ("loaded",), SECRET)
        async with LiveV2VClient(url, api_key=SECRET) as client:
            await client.connect(NumberedFrames(size=64, fps=20))
            await client.recv()
            proc.send_signal(signal.SIGINT)
            stopped = await client.message("stream_stopped", timeout_s=15)
            assert stopped["error_message"] == "Server shutting down"
        code = await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read() if proc.stdout else ""
    assert code == 0, log
    assert f"on http://localhost:{port}" in log  # the one line with the URL
    assert "session" in log and "closed: Server shutting down" in log
    assert SECRET not in log
    with pytest.raises(httpx.ConnectError):  # the port is closed: nothing left running
        await asyncio.to_thread(httpx.get, f"{url}/health", timeout=2)
