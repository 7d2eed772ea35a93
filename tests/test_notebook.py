"""examples/notebook.ipynb executed headless in a real IPython kernel (nbclient), twice."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import httpx
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import free_port, wait_until_loaded

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


def test_notebook_serves_the_studio_inline_and_reuses_its_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
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
