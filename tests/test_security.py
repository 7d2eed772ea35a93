"""The optional API key and the local-folder policy for load_params."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline import ForbiddenPathError, LocalPathPolicy
from signaling.client import ApiError, LiveV2VClient, NumberedFrames
from tests.conftest import Server, serve_in_thread

KEY = "k3y-for-tests"


@pytest.fixture(scope="module")
def locked() -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough", api_key=KEY) as server:
        yield server


@pytest.mark.parametrize("path", ["/api/v1/webrtc/ice-servers", "/api/v1/pipeline/status",
                                  "/api/v1/pipelines/schemas"])
def test_every_api_route_needs_the_key(locked: Server, path: str) -> None:
    r = httpx.get(locked.url + path)
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(locked.url + path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(locked.url + path, headers={"Authorization": f"Bearer {KEY}"}).is_success
    assert httpx.get(locked.url + path, headers={"X-API-Key": KEY}).is_success


def test_mutating_routes_need_the_key_too(locked: Server) -> None:
    for method, path in [("POST", "/api/v1/webrtc/offer"), ("PATCH", "/api/v1/webrtc/offer/x"),
                         ("DELETE", "/api/v1/webrtc/offer/x"), ("POST", "/api/v1/pipeline/load")]:
        assert httpx.request(method, locked.url + path, json={}).status_code == 401, path


def test_health_and_cors_preflight_stay_open(locked: Server) -> None:
    assert httpx.get(locked.url + "/health").status_code == 200
    r = httpx.options(locked.url + "/api/v1/webrtc/offer", headers={
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    assert "authorization" in r.headers["access-control-allow-headers"].lower()


async def test_a_client_with_the_key_streams(locked: Server) -> None:
    async with LiveV2VClient(locked.url) as anonymous:
        with pytest.raises(ApiError) as err:
            await anonymous.connect(NumberedFrames(size=64))
        assert err.value.status == 401
    async with LiveV2VClient(locked.url, api_key=KEY) as client:
        await client.connect(NumberedFrames(size=64, fps=20))
        await client.recv()


def test_path_policy(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "sd").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (models / "link").symlink_to(outside)
    policy = LocalPathPolicy(allow_any=False, models_dir=models)
    policy.check(str(models / "sd"))
    policy.check("stabilityai/sd-turbo")  # hub ids are always fine
    for escape in [str(outside), str(models / ".." / "secret"), str(models / "link"), "/etc"]:
        with pytest.raises(ForbiddenPathError):
            policy.check(escape)
    public = LocalPathPolicy(allow_any=False)
    public.check("madebyollin/taesd")
    with pytest.raises(ForbiddenPathError, match="--models-dir"):
        public.check(str(models / "sd"))
    LocalPathPolicy(allow_any=True).check("/anything/at/all")


def test_a_public_server_refuses_local_model_folders(tmp_path: Path) -> None:
    # Bound (in its settings) to every interface: visitors must not probe the disk.
    with serve_in_thread(pipeline="passthrough", host="0.0.0.0") as server:
        r = httpx.post(server.url + "/api/v1/pipeline/load", json={
            "pipeline_ids": ["streamdiffusion"], "load_params": {"model_id": str(tmp_path)}})
        assert r.status_code == 403 and "hub id" in r.json()["detail"]
        r = httpx.post(server.url + "/api/v1/pipeline/load", json={
            "pipeline_ids": ["streamdiffusion"], "load_params": {"vae_id": "/etc"}})
        assert r.status_code == 403
        status = httpx.get(server.url + "/api/v1/pipeline/status").json()
        assert status["pipeline_id"] == "passthrough" and status["status"] == "loaded"
