"""`/api/v1/models/status|download`: the real huggingface_hub download code against a local
stand-in for the Hub (tests/local_hub.py) that serves tiny models written with save_pretrained.

huggingface_hub reads HF_ENDPOINT and HF_HOME into `huggingface_hub.constants` when it is
imported, so the tests point those constants at the stand-in and at a temp cache; the one test
that loads the downloaded weights does so in a fresh process with the environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub.constants as hub_constants
import pytest
from huggingface_hub import try_to_load_from_cache

from pipeline import LoadParams
from pipeline.models.passthrough import PassthroughPipeline
from pipeline.registry import register
from pipeline.resources.hub import HubModel
from tests.conftest import ROOT, Server, free_port, serve_in_thread, wait_until_loaded
from tests.local_hub import LocalHub, point_hub_at
from tests.tiny_models import build_tiny_sd, build_tiny_taesd

SD, TAESD = "stabilityai/sd-turbo", "madebyollin/taesd"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub-models")
    return {SD: build_tiny_sd(root / "sd"), TAESD: build_tiny_taesd(root / "taesd")}


@pytest.fixture
def hub(model_folders: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with LocalHub(model_folders).running() as local:
        point_hub_at(monkeypatch, local.url, tmp_path / "hf-home")
        yield local


@pytest.fixture
def server() -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough") as srv:
        yield srv


def status(server: Server, pipeline_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/api/v1/models/status", params={"pipeline_id": pipeline_id},
                  timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(server: Server, pipeline_id: str, done: Any, timeout_s: float = 90) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        last = status(server, pipeline_id)
        if done(last):
            return last
        assert time.monotonic() < deadline, f"status never reached the wanted state: {last}"
        time.sleep(0.1)


def expected_files(folders: dict[str, Path]) -> dict[str, Path]:
    """streamdiffusion's defaults: the checkpoint without its own VAE, plus TAESD."""
    files = {f"{SD}/{p.relative_to(folders[SD]).as_posix()}": p
             for p in folders[SD].rglob("*") if p.is_file() and "vae" not in p.parts}
    files.update({f"{TAESD}/{p.name}": p for p in folders[TAESD].iterdir()})
    return files


def test_download_fills_the_cache_with_progress_and_409_while_running(
        hub: LocalHub, server: Server, model_folders: dict[str, Path]) -> None:
    before = status(server, "streamdiffusion")
    assert before["downloaded"] is False and before["progress"] is None
    assert {m["repo_id"]: m["cached"] for m in before["models"]} == {SD: False, TAESD: False}

    unet = "unet/diffusion_pytorch_model.safetensors"
    hub.gate, hub.held = threading.Event(), {unet}  # the UNet waits: the download stays running
    r = httpx.post(f"{server.url}/api/v1/models/download",
                   json={"pipeline_id": "streamdiffusion"}, timeout=30)
    assert r.status_code == 200, r.text
    running = wait_status(server, "streamdiffusion",
                          lambda s: s["progress"] and s["progress"]["downloaded_bytes"] > 0)
    again = httpx.post(f"{server.url}/api/v1/models/download",
                       json={"pipeline_id": "streamdiffusion"}, timeout=30)
    assert again.status_code == 409 and "already running" in again.json()["detail"]
    expected = expected_files(model_folders)
    progress = running["progress"]
    assert running["downloaded"] is False and progress["is_downloading"] is True
    assert progress["files_total"] == len(expected)
    assert progress["total_bytes"] == sum(p.stat().st_size for p in expected.values())
    assert progress["current_artifact"] == SD and progress["files_done"] < len(expected)
    unet_bytes = (model_folders[SD] / unet).stat().st_size
    assert progress["downloaded_bytes"] <= progress["total_bytes"] - unet_bytes
    assert 0 < progress["percentage"] < 100

    hub.gate.set()
    done = wait_status(server, "streamdiffusion", lambda s: s["downloaded"])
    assert done["progress"] is None and all(m["cached"] for m in done["models"])
    for name, source in expected.items():  # every byte went through the hub cache
        repo = "/".join(name.split("/")[:2])
        cached = try_to_load_from_cache(repo, name[len(repo) + 1:])
        assert isinstance(cached, str) and Path(cached).read_bytes() == source.read_bytes()
    assert not any("/vae/" in path for _, path in hub.requests)  # TAESD instead


def test_downloaded_weights_load_offline(hub: LocalHub, server: Server, tmp_path: Path) -> None:
    """The files a pipeline declares are all it needs: after the download, a fresh process with
    HF_HUB_OFFLINE=1 loads streamdiffusion from the cache alone."""
    httpx.post(f"{server.url}/api/v1/models/download", json={"pipeline_id": "streamdiffusion"},
               timeout=30).raise_for_status()
    wait_status(server, "streamdiffusion", lambda s: s["downloaded"])
    script = (
        "from pipeline.models.streamdiffusion import (StreamDiffusionParams,\n"
        "    StreamDiffusionPipeline)\n"
        "p = StreamDiffusionPipeline(StreamDiffusionParams(height=64, width=64, device='cpu'))\n"
        "p.load(lambda f, s: None)\n"
        "print('LOADED', p.latent_shape)\n")
    env = {**os.environ, "HF_HOME": hub_constants.HF_HOME, "HF_HUB_OFFLINE": "1",
           "HF_HUB_CACHE": hub_constants.HF_HUB_CACHE, "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED (4, 8, 8)" in done.stdout


class HubEchoParams(LoadParams):
    model_id: str = "org/default-model"


@register
class HubEchoPipeline(PassthroughPipeline):
    """Passes frames through; "loads" the hub repo its `model_id` names."""

    id = "test-hub-echo"
    name = description = "test: hub echo"
    Params = HubEchoParams

    @classmethod
    def hub_models(cls, params: LoadParams | None = None) -> list[HubModel]:
        p = params if isinstance(params, HubEchoParams) else HubEchoParams()
        return [HubModel(p.model_id, ("config.json",))]


def test_status_follows_the_loaded_pipelines_load_params(hub: LocalHub, server: Server) -> None:
    def repos() -> list[str]:
        return [m["repo_id"] for m in status(server, "test-hub-echo")["models"]]

    assert repos() == ["org/default-model"]  # not loaded: its defaults
    r = httpx.post(f"{server.url}/api/v1/pipeline/load", timeout=10, json={
        "pipeline_ids": ["test-hub-echo"], "load_params": {"model_id": TAESD}})
    assert r.status_code == 200, r.text
    assert wait_until_loaded(server.url)["pipeline_id"] == "test-hub-echo"
    assert repos() == [TAESD]
    # The load fetched the files its load params name before the pipeline loaded.
    assert status(server, "test-hub-echo")["downloaded"] is True
    assert ("GET", f"/{TAESD}/resolve/{hub.sha(TAESD)}/config.json") in hub.requests
    assert not any("org/default-model" in path for _, path in hub.requests)


def test_unknown_pipelines_bad_input_and_pipelines_without_weights(
        hub: LocalHub, server: Server) -> None:
    url = f"{server.url}/api/v1/models"
    r = httpx.get(f"{url}/status", params={"pipeline_id": "nope"}, timeout=10)
    assert r.status_code == 404 and "Unknown pipeline 'nope'" in r.json()["detail"]
    r = httpx.post(f"{url}/download", json={"pipeline_id": "nope"}, timeout=10)
    assert r.status_code == 404 and "Unknown pipeline" in r.json()["detail"]
    for bad in ({}, {"pipeline_id": ""}, {"pipeline_id": "../../etc"}, {"pipeline_id": 3}, []):
        r = httpx.post(f"{url}/download", json=bad, timeout=10)
        assert r.status_code == 422 and "detail" in r.json(), bad
    assert httpx.get(f"{url}/status", timeout=10).status_code == 422
    assert status(server, "passthrough") == {"downloaded": True, "progress": None, "models": []}
    r = httpx.post(f"{url}/download", json={"pipeline_id": "passthrough"}, timeout=10)
    assert r.status_code == 200 and "needs no model download" in r.json()["message"]
    assert not [p for _, p in hub.requests if p.startswith("/api/models") or "/resolve/" in p]


def test_unreachable_hub_and_offline_mode_are_clear_errors(
        hub: LocalHub, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    point_hub_at(monkeypatch, closed, tmp_path / "elsewhere")
    r = httpx.post(f"{server.url}/api/v1/models/download",
                   json={"pipeline_id": "streamdiffusion"}, timeout=30)
    assert r.status_code == 200
    failed = wait_status(server, "streamdiffusion",
                         lambda s: s["progress"] and not s["progress"]["is_downloading"])
    assert failed["downloaded"] is False
    assert "Cannot reach the Hugging Face Hub" in failed["progress"]["error"]
    assert SD in failed["progress"]["error"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = httpx.post(f"{server.url}/api/v1/models/download",
                   json={"pipeline_id": "streamdiffusion"}, timeout=30)
    assert r.status_code == 503 and "HF_HUB_OFFLINE" in r.json()["detail"]
    assert json.dumps(status(server, "streamdiffusion"))  # status still answers offline
