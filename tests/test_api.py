"""The HTTP API of api.md on a real uvicorn server: shapes, errors, CORS, limits."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from aiortc import RTCPeerConnection

from tests.conftest import Server, serve_in_thread


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve_in_thread(pipeline="passthrough") as srv:
        yield srv


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


async def make_offer(video: bool = True) -> str:
    pc = RTCPeerConnection()
    if video:
        pc.addTransceiver("video")
    else:
        pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def test_health(http: httpx.Client) -> None:
    body = http.get("/health").json()
    assert body["status"] == "healthy"
    assert body["version"] and "T" in body["timestamp"]
    assert abs(body["server_start_time"] - time.time()) < 600


def test_ice_servers_on_loopback_are_empty(http: httpx.Client) -> None:
    assert http.get("/api/v1/webrtc/ice-servers").json() == {"iceServers": []}


def test_status_shape(http: httpx.Client) -> None:
    body = http.get("/api/v1/pipeline/status").json()
    assert body["status"] == "loaded" and body["pipeline_id"] == "passthrough"
    assert body["produces_video"] is True and body["produces_audio"] is False
    assert {"load_params", "error", "loading_stage", "progress"} <= body.keys()


def test_schemas_describe_every_pipeline(http: httpx.Client) -> None:
    pipelines = http.get("/api/v1/pipelines/schemas").json()["pipelines"]
    effect = pipelines["cpu-effect"]
    assert effect["supported_modes"] == ["video", "text"]
    assert effect["default_mode"] == "video"
    assert "prompts" in effect["config_schema"]["properties"]
    assert "height" in effect["load_schema"]["properties"]
    assert effect["mode_defaults"]["text"]["denoising_step_list"] == [1000, 750, 500, 250]
    assert pipelines["passthrough"]["supported_modes"] == ["video"]


def test_openapi_documents_the_models(http: httpx.Client) -> None:
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert {"OfferRequest", "OfferResponse", "CandidatesRequest", "PipelineLoadRequest",
            "ParameterUpdate"} <= schemas.keys()
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"sdp": "garbage", "type": "offer"}, 400, "not a session description"),
    ({"sdp": "v=0\r\n", "type": "offer"}, 400, "no video m-line"),
    ({"type": "offer"}, 422, None),
    ({"sdp": 5, "type": "offer"}, 422, None),
    ({"sdp": "v=0", "type": "offer", "initialParameters": {"noise_scale": 7}}, 422, None),
    ({"sdp": "v=0" + "x" * 70_000, "type": "offer"}, 422, None),
])
def test_bad_offers_get_4xx_json(http: httpx.Client, body: dict, status: int,
                                 detail: str | None) -> None:
    response = http.post("/api/v1/webrtc/offer", json=body)
    assert response.status_code == status
    if detail:
        assert detail in response.json()["detail"]
    else:
        assert isinstance(response.json()["detail"], list)


async def test_offer_without_video_or_not_an_offer_is_400(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        audio_only = await make_offer(video=False)
        r = await http.post("/api/v1/webrtc/offer", json={"sdp": audio_only, "type": "offer"})
        assert r.status_code == 400 and "video" in r.json()["detail"]
        video = await make_offer()
        r = await http.post("/api/v1/webrtc/offer", json={"sdp": video, "type": "answer"})
        assert r.status_code == 400 and "offer" in r.json()["detail"]


def test_malformed_json_is_422(http: httpx.Client) -> None:
    r = http.post("/api/v1/webrtc/offer", content=b"{not json",
                  headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_huge_body_is_413(http: httpx.Client) -> None:
    r = http.post("/api/v1/webrtc/offer", content=b"x" * 400_000,
                  headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_unknown_session_patch_is_404_and_delete_is_204(http: httpx.Client) -> None:
    sid = str(uuid.uuid4())
    r = http.patch(f"/api/v1/webrtc/offer/{sid}", json={"candidates": []})
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert http.delete(f"/api/v1/webrtc/offer/{sid}").status_code == 204


def test_patch_body_is_validated(http: httpx.Client) -> None:
    sid = str(uuid.uuid4())
    r = http.patch(f"/api/v1/webrtc/offer/{sid}", json={"candidates": [{"sdpMid": "0"}]})
    assert r.status_code == 422


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400),
    ({"pipeline_ids": []}, 400),
    ({"pipeline_ids": ["nope"]}, 400),
    ({"pipeline_ids": ["passthrough", "cpu-effect"]}, 400),
    ({"pipelines": [{"node_id": "n", "pipeline_id": "nope"}]}, 400),
    ({"pipeline_ids": ["passthrough"], "load_params": {"height": 10**9}}, 422),
    ({"pipeline_ids": ["passthrough"], "load_params": {"width": "wide"}}, 422),
    ({"pipeline_ids": "passthrough"}, 422),
])
def test_bad_loads(http: httpx.Client, body: dict, status: int) -> None:
    r = http.post("/api/v1/pipeline/load", json=body)
    assert r.status_code == status
    assert "detail" in r.json()
    assert http.get("/api/v1/pipeline/status").json()["pipeline_id"] == "passthrough"


def test_load_both_forms_then_status(http: httpx.Client) -> None:
    r = http.post("/api/v1/pipeline/load",
                  json={"pipelines": [{"node_id": "main", "pipeline_id": "cpu-effect",
                                       "load_params": {"height": 256, "width": 256}}]})
    assert r.json() == {"message": "Pipeline loading initiated successfully"}
    _wait_loaded(http, "cpu-effect")
    assert http.get("/api/v1/pipeline/status").json()["load_params"]["height"] == 256
    r = http.post("/api/v1/pipeline/load", json={"pipeline_ids": ["passthrough"]})
    assert r.status_code == 200
    _wait_loaded(http, "passthrough")


def _wait_loaded(http: httpx.Client, pipeline_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = http.get("/api/v1/pipeline/status").json()
        if body["status"] == "loaded" and body["pipeline_id"] == pipeline_id:
            return
        time.sleep(0.05)
    raise AssertionError(body)


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:3000"])
def test_cors_preflight_passes_for_local_origins(http: httpx.Client, origin: str) -> None:
    for method in ("POST", "PATCH"):
        r = http.options("/api/v1/webrtc/offer", headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == origin
        assert method in r.headers["access-control-allow-methods"]


def test_cors_refuses_other_origins(http: httpx.Client) -> None:
    r = http.options("/api/v1/webrtc/offer", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers
    r = http.get("/health", headers={"Origin": "http://localhost.evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_ui_is_mounted_without_shadowing_the_api(http: httpx.Client) -> None:
    assert http.get("/").status_code == 200
    assert http.get("/api/v1/nothing-here").status_code == 404


def test_unload_then_load_again(http: httpx.Client) -> None:
    assert http.post("/api/v1/pipeline/unload").json() == {"message": "Pipeline unloaded"}
    assert http.get("/api/v1/pipeline/status").json()["status"] == "not_loaded"
    http.post("/api/v1/pipeline/load", json={"pipeline_ids": ["passthrough"]})
    _wait_loaded(http, "passthrough")
