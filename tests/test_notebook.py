"""examples/notebook.ipynb executed headless in a real IPython kernel (nbclient): on the
kernel's machine (twice: the second run reuses the server), and under a real Jupyter Server
with jupyter-server-proxy, whose cell frame streams in Chromium through the proxied URL."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import OUTPUT, end_process, free_port, wait_until_loaded
from tests.studio_checks import stop, stream_and_steer

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def _run_all(client: NotebookClient, nb: Any) -> None:
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            client.execute_cell(cell, index)


def _html(cell: Any) -> str:
    return "".join(out.get("data", {}).get("text/html", "") for out in cell.outputs
                   if out.output_type in ("execute_result", "display_data"))


def _image(cell: Any) -> Image.Image:
    for out in cell.outputs:
        if "image/png" in out.get("data", {}):
            return Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"])))
    raise AssertionError(f"no image in the cell's outputs: {cell.outputs}")


# What would make iframe() pick another way than the one a test sets up.
_DETECTION_ENV = ("SSH_CONNECTION", "SSH_CLIENT", "JUPYTERHUB_SERVICE_PREFIX",
                  "JUPYTERHUB_API_TOKEN", "REMOTE_CONTAINERS", "CODESPACES",
                  # and what would give the server TURN (the cell then says nothing about it)
                  "HF_TOKEN", "TURN_URLS", "STUN_URLS", "TWILIO_ACCOUNT_SID")


@pytest.fixture
def kernel_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The kernel's environment: no SSH or hub variables, and a Jupyter runtime folder of its
    own (where running Jupyter Servers are listed). Returns that folder."""
    for name in _DETECTION_ENV:
        monkeypatch.delenv(name, raising=False)
    runtime = tmp_path / "jupyter-runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))  # no cached hub login
    return runtime


def test_notebook_serves_the_studio_inline_and_reuses_its_server(
        monkeypatch: pytest.MonkeyPatch, kernel_env: Path) -> None:
    port = free_port()
    monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))  # the kernel inherits it
    url = f"http://localhost:{port}"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    with client.setup_kernel():
        _run_all(client, nb)
        start, frame, picture = code[0], code[1], code[2]
        assert not [o for c in code for o in c.outputs if o.output_type == "error"]

        # The first cell says where the server is; the server answers there.
        assert f'href="{url}"' in _html(start) and "started" in _html(start)
        status = wait_until_loaded(url.replace("localhost", "127.0.0.1"))
        assert status["pipeline_id"] == "cpu-effect" and status["status"] == "loaded"
        health = httpx.get(f"{url}/health", timeout=10).json()

        # The inline output is the studio page of that server.
        src = re.search(r'<iframe[^>]*src="([^"]+)"', _html(frame))
        assert src is not None and src.group(1).rstrip("/") == url
        assert 'allow="camera' in _html(frame)
        page = httpx.get(src.group(1), timeout=30)
        assert page.status_code == 200 and "gradio" in page.text.lower()

        # A frame came back through WebRTC, restyled red by the prompt.
        image = np.asarray(_image(picture).convert("RGB"), dtype=np.float64)
        assert image.shape == (256, 256, 3)
        red, green, blue = image.mean(axis=(0, 1))
        assert red > green and red > blue

        # Running the notebook again reuses the running server instead of starting another.
        _run_all(client, nb)
        assert not [o for c in code for o in c.outputs if o.output_type == "error"]
        assert f'href="{url}"' in _html(start) and "reused" in _html(start)
        again = httpx.get(f"{url}/health", timeout=10).json()
        assert again["server_start_time"] == health["server_start_time"]
        assert _image(picture).size == (256, 256)


TOKEN = "notebook-test-token"
BASE_URL = "/user/alice/"


@contextlib.contextmanager
def jupyter_server(runtime: Path, root_dir: Path) -> Iterator[Callable[[], str]]:
    """A real Jupyter Server (jupyter-server-proxy enabled by its installed config) on loopback
    with a token and JupyterHub's kind of base URL. Yields `ready()`, which waits until the
    server is listed in `runtime` (where the kernel finds it) and returns its URL: it starts
    while the kernel imports the app."""
    port = free_port()
    OUTPUT.mkdir(exist_ok=True)
    log = (OUTPUT / f"jupyter-server-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
         "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.base_url={BASE_URL}", f"--ServerApp.root_dir={root_dir}"],
        env={**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)},
        stdout=log, stderr=subprocess.STDOUT)

    def ready() -> str:
        deadline = time.monotonic() + 120
        while not list(runtime.glob("jpserver-*.json")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Jupyter Server did not start; see {log.name}")
            time.sleep(0.1)
        return f"http://127.0.0.1:{port}{BASE_URL}"

    try:
        yield ready
    finally:
        end_process(proc, log)


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_notebook_under_jupyter_server_proxy_streams_in_the_browser(
        monkeypatch: pytest.MonkeyPatch, kernel_env: Path, browser: Any) -> None:
    port = free_port()
    monkeypatch.setenv("GRADIO_SERVER_PORT", str(port))
    with jupyter_server(kernel_env, NOTEBOOK.parent) as jupyter_ready:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        code = [cell for cell in nb.cells if cell.cell_type == "code"]
        client = NotebookClient(nb, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        with client.setup_kernel():
            # The start and the frame cells (the Python-client cell runs in the test above).
            start, frame_cell = nb.cells.index(code[0]), nb.cells.index(code[1])
            client.execute_cell(nb.cells[start], start)
            jupyter = jupyter_ready()
            client.execute_cell(nb.cells[frame_cell], frame_cell)
            assert not [o for c in code[:2] for o in c.outputs if o.output_type == "error"]
            frame_html = _html(code[1])
            # The frame loads the app through the proxy, relative to the notebook's origin.
            proxied = f"{BASE_URL}proxy/{port}/"
            assert f'src="{proxied}"' in frame_html and 'allow="camera' in frame_html
            # no TURN here (loopback): the cell says what to set for browsers elsewhere
            assert "set HF_TOKEN" in frame_html

            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            errors: list[str] = []
            requests: list[str] = []
            page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
            try:
                # Log in to Jupyter with its token (a cookie, as a user's browser has), then
                # show the cell's output in a page of Jupyter's origin: the stand-in for
                # JupyterLab's page (not installed here); the frame and everything in it go to
                # the real Jupyter Server.
                page.goto(f"{jupyter}api/status?token={TOKEN}")
                host = f"{jupyter}livev2v-test-notebook-page"
                page.route(host, lambda route: route.fulfill(
                    content_type="text/html", body=f"<!doctype html><body>{frame_html}</body>"))
                page.goto(host)
                frame = page.wait_for_selector("iframe").content_frame()
                assert frame is not None
                frame.page.on("console", lambda m: m.type == "error" and errors.append(m.text))
                colours = stream_and_steer(frame)
                assert colours["blue"][2] > colours["red"][2] + 6, colours
                session = frame.evaluate("() => window.liveV2V.client.sessionId")
                assert frame.url == jupyter[:-len(BASE_URL)] + proxied
                page.screenshot(path=str(OUTPUT / "notebook-jupyter-proxy.png"))
                stop(frame)
            finally:
                context.close()
            app = [r for r in requests if f":{port}" in r or "/proxy/" in r]
            offer = f"{jupyter[:-len(BASE_URL)]}{proxied}api/v1/webrtc/offer"
            assert f"POST {offer}" in app and f"PATCH {offer}/{session}" in app
            direct = [r for r in app if f"127.0.0.1:{port}" in r or f"localhost:{port}" in r]
            assert direct == [], direct  # the browser never went to the kernel's port itself
            assert errors == [], errors
