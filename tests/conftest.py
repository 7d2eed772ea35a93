"""Shared fixtures: the app on a real uvicorn server on 127.0.0.1, in-process or as `python
app.py`, and headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from app import serve_in_background
from pipeline import PipelineService

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"  # screenshots and logs from browser tests
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_loaded(url: str, timeout_s: float = 60.0,
                      done: tuple[str, ...] = ("loaded", "error"),
                      api_key: str | None = None,
                      proc: subprocess.Popen[bytes] | None = None) -> dict[str, Any]:
    """Poll /api/v1/pipeline/status until the start-up pipeline is loaded (or `proc`, the
    server's process, has exited: no point waiting for a server that is gone)."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server at {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            last = httpx.get(f"{url}/api/v1/pipeline/status", timeout=2, headers=headers).json()
            if last["status"] in done:
                return last
        time.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready: {last}")


@dataclass
class Server:
    url: str
    app: Any  # the FastAPI app (in-process servers only)


@contextlib.contextmanager
def serve_in_thread(**settings: Any) -> Iterator[Server]:
    """The real app on a real uvicorn server, in this process (so tests can look inside).
    Its per-user data folder is a fresh temporary one (never the real home's)."""
    data_dir = Path(tempfile.mkdtemp(prefix="livev2v-data-"))
    background = serve_in_background(**{"host": "127.0.0.1", "port": free_port(),
                                        "data_dir": data_dir, **settings})
    url = background.url.replace("localhost", "127.0.0.1")
    try:
        wait_until_loaded(url, done=("loaded", "error") if settings.get("pipeline") else
                          ("not_loaded",), api_key=settings.get("api_key"))
        yield Server(url=url, app=background.app)
    finally:
        background.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def serve_process(*args: str, log_name: str = "server") -> Iterator[Server]:
    """`python app.py` exactly as a user starts it, on a free port."""
    port = free_port()
    OUTPUT.mkdir(exist_ok=True)
    log = (OUTPUT / f"{log_name}-{port}.log").open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), *args],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        # Generous: importing torch and gradio takes minutes on a busy 2-core machine.
        wait_until_loaded(url, timeout_s=300, api_key=key, proc=proc)
        yield Server(url=url, app=None)
    finally:
        end_process(proc, log)


@pytest.fixture
def service() -> Iterator[PipelineService]:
    """A started pipeline service with nothing loaded (text mode at 50 fps, to keep tests short)."""
    svc = PipelineService(text_fps=50)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def passthrough_server() -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough") as server:
        yield server


@pytest.fixture
def effect_server() -> Iterator[Server]:
    with serve_in_thread(pipeline="cpu-effect") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never a downloaded one). Per module: Playwright's sync API
    keeps an event loop running in the main thread while it is open, which async tests in
    other modules cannot share."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run the README's test command (it installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def end_process(proc: subprocess.Popen, log: IO) -> None:
    """Stop a server process started by a test (terminate, then kill after 15 s), close its log."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
