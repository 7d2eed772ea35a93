"""LoRA routes (Scope's): list, install from a stand-in Hugging Face hub and a stand-in CivitAI
over real HTTP, progress while a download runs, no half file after a failed one, delete, and
the routes fuzzed (4xx, never 5xx)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from pipeline.resources.lora_install import mask, safe_filename
from tests.conftest import Server, serve_in_thread
from tests.local_hub import LocalHub
from tests.tiny_loras import write_peft_lora
from tests.tiny_models import build_tiny_sd


@pytest.fixture(scope="module")
def lora_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    root = tmp_path_factory.mktemp("lora-src")
    return write_peft_lora(build_tiny_sd(root / "sd"), root / "l.safetensors").read_bytes()


class StandInCivitai:
    """CivitAI's model-version API and download route, plus ways to fail: a download that
    pauses half-way until `resume` is set, and one cut off before its Content-Length."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files  # version id → bytes
        self.pause_at: int | None = None
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.cut_off: set[str] = set()
        self.auth: list[str | None] = []
        civitai = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                civitai.auth.append(self.headers.get("Authorization"))
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if parts[:3] == ["api", "v1", "model-versions"] and parts[3:4]:
                    version = parts[3]
                    if version not in civitai.files:
                        return self._send(404, b'{"error": "not found"}')
                    body = {"id": int(version), "files": [{
                        "name": f"style_{version}.safetensors", "primary": True,
                        "downloadUrl": f"{civitai.url}/api/download/models/{version}"}]}
                    return self._send(200, json.dumps(body).encode())
                if parts[:3] == ["api", "download", "models"] and parts[3:4]:
                    data = civitai.files.get(parts[3])
                    if data is None:
                        return self._send(404, b"{}")
                    return self._stream(data, cut=parts[3] in civitai.cut_off)
                self._send(404, b"{}")

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, data: bytes, cut: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                half = civitai.pause_at if civitai.pause_at is not None else len(data) // 2
                self.wfile.write(data[:half])
                self.wfile.flush()
                if cut:
                    self.close_connection = True
                    return
                if civitai.pause_at is not None:
                    civitai.paused.set()
                    civitai.resume.wait(60)
                self.wfile.write(data[half:])

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[StandInCivitai]:
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.resume.set()
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="module")
def hubs(lora_bytes: bytes, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[LocalHub, StandInCivitai]]:
    repo = tmp_path_factory.mktemp("hf-repo")
    (repo / "pytorch_lora_weights.safetensors").write_bytes(lora_bytes)
    (repo / "sub").mkdir()
    (repo / "sub" / "pixel.safetensors").write_bytes(lora_bytes)
    (repo / "not_a_lora.safetensors").write_bytes(b"<html>oops</html>")
    models = repo / "models"  # LongLive-1.3B's layout: its LoRA is a torch.save'd PEFT dict
    models.mkdir()
    torch.save({"generator_lora": {
        "base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 16),
        "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.randn(16, 4)},
        "step": 3000}, models / "lora.pt")
    torch.save({"generator": {"model.blocks.0.self_attn.q.weight": torch.randn(16, 16)}},
               models / "longlive_base.pt")
    whole = (models / "lora.pt").read_bytes()
    (models / "cut.pt").write_bytes(whole[: len(whole) // 2])
    hub = LocalHub({"someone/style-lora": repo})
    civitai = StandInCivitai({"123": lora_bytes, "124": lora_bytes, "125": lora_bytes})
    with hub.running(), civitai.running():
        yield hub, civitai


@pytest.fixture(scope="module")
def server(hubs: tuple[LocalHub, StandInCivitai], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    hub, civitai = hubs
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_ENDPOINT", hub.url)
    patch.setenv("CIVITAI_ENDPOINT", civitai.url)
    patch.setenv("CIVITAI_API_TOKEN", "secret-civitai-token")
    folder = tmp_path_factory.mktemp("lora-dir")
    try:
        with serve_in_thread(pipeline=None, lora_dir=folder, lora_max_bytes=1024 * 1024) as srv:
            yield srv
    finally:
        patch.undo()


def api(server: Server, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{server.url}/api/v1{path}", timeout=60, **kw)


def lora_dir(server: Server) -> Path:
    return server.app.state.service.lora_folder.root


def names(server: Server) -> list[str]:
    return [f["name"] for f in api(server, "GET", "/loras").json()["lora_files"]]


def test_install_from_the_hub_lists_and_deletes(server: Server, hubs: Any,
                                                lora_bytes: bytes) -> None:
    hub, _ = hubs
    url = f"{hub.url}/someone/style-lora/resolve/main/pytorch_lora_weights.safetensors"
    r = api(server, "POST", "/loras", json={"url": url, "filename": "hub_style.safetensors"})
    assert r.status_code == 200, r.text
    file = r.json()["file"]
    assert file["name"] == "hub_style" and Path(file["path"]).read_bytes() == lora_bytes
    assert "hub_style" in names(server)
    # Scope's download by source; into a sub-folder
    r = api(server, "POST", "/lora/download", json={
        "source": "huggingface", "repo_id": "someone/style-lora",
        "hf_filename": "sub/pixel.safetensors", "subfolder": "pixel-art"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == "pixel-art/pixel.safetensors"
    assert body["sha256"] == hashlib.sha256(lora_bytes).hexdigest()
    listed = {f["name"]: f for f in api(server, "GET", "/loras").json()["lora_files"]}
    assert listed["pixel"]["folder"] == "pixel-art"
    # the same again: 409, the file stays
    r = api(server, "POST", "/loras", json={"url": url, "filename": "hub_style.safetensors"})
    assert r.status_code == 409
    assert api(server, "DELETE", "/loras/hub_style").status_code == 200
    assert api(server, "DELETE", "/loras/hub_style").status_code == 404
    assert "hub_style" not in names(server)


def test_a_pytorch_lora_installs_and_a_full_model_or_cut_file_does_not(server: Server,
                                                                        hubs: Any) -> None:
    hub, _ = hubs
    base = f"{hub.url}/someone/style-lora/resolve/main/models"
    r = api(server, "POST", "/loras", json={"url": f"{base}/lora.pt",
                                            "filename": "longlive_lora.pt"})
    assert r.status_code == 200, r.text
    assert "longlive_lora" in names(server)
    r = api(server, "POST", "/loras", json={"url": f"{base}/longlive_base.pt"})
    assert r.status_code == 400 and "holds no LoRA weights" in r.json()["detail"]
    r = api(server, "POST", "/loras", json={"url": f"{base}/cut.pt"})
    assert r.status_code == 400 and "not a complete PyTorch zip" in r.json()["detail"]
    assert not any(p.name.startswith(("longlive_base", "cut", "."))
                   for p in lora_dir(server).rglob("*"))
    assert api(server, "DELETE", "/loras/longlive_lora").status_code == 200


def test_install_from_civitai_uses_its_api_and_the_token(server: Server, hubs: Any) -> None:
    _, civitai = hubs
    r = api(server, "POST", "/loras", json={"url": f"{civitai.url}/api/download/models/123"})
    assert r.status_code == 200, r.text
    assert r.json()["file"]["name"] == "style_123"
    assert civitai.auth[-1] == "Bearer secret-civitai-token"  # a header, never in the URL
    r = api(server, "POST", "/lora/download", json={"source": "civitai", "version_id": "404"})
    assert r.status_code == 404 and "no model version 404" in r.json()["detail"]


def test_progress_while_downloading_then_done(server: Server, hubs: Any,
                                              lora_bytes: bytes) -> None:
    _, civitai = hubs
    civitai.pause_at, civitai.resume = 1000, threading.Event()
    civitai.paused.clear()
    result: dict[str, httpx.Response] = {}
    worker = threading.Thread(target=lambda: result.update(r=api(
        server, "POST", "/lora/download",
        json={"source": "url", "url": f"{civitai.url}/api/download/models/124?token=leak"})))
    worker.start()
    try:
        assert civitai.paused.wait(60)
        running = wait_for(server, lambda d: d["status"] == "downloading"
                           and d["downloaded_bytes"] >= 1000)
        assert running["total_bytes"] == len(lora_bytes)
        assert 0 < running["percentage"] < 100
        assert "leak" not in running["url"]
    finally:
        civitai.resume.set()
        worker.join(60)
        civitai.pause_at = None
    assert result["r"].status_code == 200, result["r"].text
    done = wait_for(server, lambda d: d["filename"] == "style_124.safetensors"
                    and d["status"] == "done")
    assert done["percentage"] == 100.0


def wait_for(server: Server, test: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    import time
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for item in api(server, "GET", "/lora/downloads").json()["downloads"]:
            if test(item):
                return item
        time.sleep(0.05)
    raise AssertionError(api(server, "GET", "/lora/downloads").json())


def test_a_failed_download_leaves_no_half_file(server: Server, hubs: Any) -> None:
    hub, civitai = hubs
    civitai.cut_off.add("125")
    before = sorted(p.name for p in lora_dir(server).rglob("*"))
    r = api(server, "POST", "/lora/download", json={"source": "civitai", "version_id": "125"})
    assert r.status_code == 502 and "try again" in r.json()["detail"]
    url = f"{hub.url}/someone/style-lora/resolve/main/not_a_lora.safetensors"
    r = api(server, "POST", "/loras", json={"url": url})
    assert r.status_code == 400 and "not a usable LoRA" in r.json()["detail"]
    r = api(server, "POST", "/loras", json={"url": f"{hub.url}/someone/style-lora/resolve/main/"
                                                   "missing.safetensors"})
    assert r.status_code == 404
    assert sorted(p.name for p in lora_dir(server).rglob("*")) == before  # no .part left
    failed = [d for d in api(server, "GET", "/lora/downloads").json()["downloads"]
              if d["status"] == "error"]
    assert failed and all(d["error"] for d in failed)


def test_too_large_a_file_is_refused(server: Server, hubs: Any, tmp_path: Path) -> None:
    hub, _ = hubs
    big = hub.repos["someone/style-lora"] / "big.safetensors"
    big.write_bytes(b"\0" * (2 * 1024 * 1024))
    try:
        r = api(server, "POST", "/loras", json={
            "url": f"{hub.url}/someone/style-lora/resolve/main/big.safetensors"})
        assert r.status_code == 413
    finally:
        big.unlink()
    assert not any(lora_dir(server).rglob("big*"))


@pytest.mark.parametrize("body", [
    {"url": "https://evil.example.com/x.safetensors"},
    {"url": "file:///etc/passwd"},
    {"url": "ftp://huggingface.co/x.safetensors"},
    {"url": "https://huggingface.co/a/b/blob/main/x.safetensors"},
    {"url": "https://huggingface.co/a/b/resolve/main/x.ckpt"},
    {"url": "not a url"},
    {"url": ""},
    {"url": "x" * 3000},
    {"url": 5},
    {"url": "https://huggingface.co/a/b/resolve/main/x.safetensors", "subfolder": "../up"},
    {"url": "https://huggingface.co/a/b/resolve/main/x.safetensors", "subfolder": "/abs"},
    {"url": "https://huggingface.co/a/b/resolve/main/x.safetensors", "filename": "../x.ckpt"},
    {"url": "https://civitai.com/models/12345"},
    {},
    [],
    "x",
])
def test_install_rejects_bad_input_with_4xx(server: Server, body: Any) -> None:
    r = api(server, "POST", "/loras", json=body)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
    assert not any(lora_dir(server).rglob("x*"))


@pytest.mark.parametrize("body", [
    {"source": "huggingface"},
    {"source": "huggingface", "repo_id": "../../etc", "hf_filename": "x.safetensors"},
    {"source": "huggingface", "repo_id": "a/b", "hf_filename": "../../x.safetensors"},
    {"source": "huggingface", "repo_id": "a/b", "hf_filename": "x.ckpt"},
    {"source": "civitai"},
    {"source": "civitai", "version_id": "abc"},
    {"source": "url"},
    {"source": "url", "url": "https://evil.example.com/x.safetensors"},
    {"source": "gopher"},
    {"source": "url", "url": "https://huggingface.co/a/b/resolve/main/x.safetensors",
     "expected_sha256": "zz"},
])
def test_download_rejects_bad_input_with_4xx(server: Server, body: Any) -> None:
    r = api(server, "POST", "/lora/download", json=body)
    assert 400 <= r.status_code < 500, (body, r.status_code, r.text)


@pytest.mark.parametrize("name", ["..", "../../etc/passwd", "%2e%2e%2fetc", "/etc/passwd",
                                  "x" * 600, "nope", "sub/../../x", "%00"])
def test_delete_never_leaves_the_folder(server: Server, name: str, tmp_path: Path) -> None:
    r = api(server, "DELETE", f"/loras/{name}")
    assert r.status_code in (404, 405), (name, r.status_code)


def test_helpers() -> None:
    assert mask("https://civitai.com/api/download/models/1?token=abc&type=Model") == (
        "https://civitai.com/api/download/models/1?token=***&type=Model")
    assert safe_filename("a/b/My LoRA (v2).safetensors") == "My LoRA (v2).safetensors"
    assert safe_filename("..%2F..%2Fx.safetensors") == "x.safetensors"


def test_workflow_resolve_finds_installed_loras(server: Server, lora_bytes: bytes) -> None:
    (lora_dir(server) / "mine.safetensors").write_bytes(lora_bytes)

    def plan(pipeline_id: str, filename: str) -> dict[str, Any]:
        workflow = {"format": "scope-workflow", "format_version": "1.0", "metadata": {},
                    "pipelines": [{"pipeline_id": pipeline_id, "source": {"type": "builtin"},
                                   "loras": [{"filename": filename, "weight": 1.0}]}]}
        r = api(server, "POST", "/workflow/resolve", json=workflow)
        assert r.status_code == 200, r.text
        return {i["name"]: i for i in r.json()["items"]}

    assert plan("streamdiffusion", "mine.safetensors")["mine.safetensors"]["status"] == "ok"
    missing = plan("streamdiffusion", "other.safetensors")["other.safetensors"]
    assert missing["status"] == "missing" and "/api/v1/loras" in missing["action"]
    assert plan("cpu-effect", "mine.safetensors")["mine.safetensors"]["status"] == "missing"
