"""What Scope's own web app reads from this server, checked against the shapes its source reads
(daydreamlive/scope `frontend/src`): schemas with `ui` hints and metadata, and the page-load
calls."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription

from pipeline import FrameRequest, InputFrame, LoadParams, Pipeline, PipelineService
from pipeline.registry import register
from pipeline.schema import config_schema
from signaling.client import NumberedFrames
from signaling.logbuffer import LogBuffer
from tests.conftest import Server, serve_in_thread
from tests.pipelines import RecordingSink

# Scope's composite Settings controls (schemaSettings.ts COMPLEX_COMPONENTS).
COMPOSITE = {"vace", "lora", "resolution", "cache", "denoising_steps", "noise", "quantization",
             "image", "custom"}
METADATA: dict[str, type | tuple[type, ...]] = {
    "id": str, "name": str, "description": str, "version": str, "docs_url": (str, type(None)),
    "estimated_vram_gb": (float, int, type(None)), "requires_models": bool,
    "supports_lora": bool, "supports_vace": bool, "usage": list, "supported_modes": list,
    "default_mode": str, "supports_prompts": bool, "supports_cache_management": bool,
    "supports_kv_cache_bias": bool, "supports_quantization": bool, "min_dimension": int,
    "inputs": list, "outputs": list, "mode_defaults": dict, "config_schema": dict,
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serve_in_thread(pipeline="cpu-effect") as srv:
        yield srv


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def widget(prop: dict[str, Any]) -> str | None:
    """The widget Scope's app infers for a property (schemaSettings.ts inferPrimitiveFieldType)."""
    if prop.get("anyOf"):
        subs = [s for s in prop["anyOf"] if s.get("type") != "null"]
        return widget(subs[0]) if subs else None
    if "$ref" in prop or "enum" in prop:
        return "enum"
    kind = prop.get("type")
    if kind == "string":
        return "text"
    if kind in ("integer", "number"):
        return "slider" if "minimum" in prop and "maximum" in prop else "number"
    return "toggle" if kind == "boolean" else None


def settings_fields(schema: dict[str, Any], mode: str) -> list[str]:
    """The keys Scope's Settings panel shows, in its order (getConfigurationFields)."""
    fields = []
    for key, prop in schema["properties"].items():
        hint = prop.get("ui")
        if hint is None or hint.get("category", "configuration") != "configuration":
            continue
        if hint.get("modes") and mode not in hint["modes"]:
            continue
        fields.append((hint.get("order", 999), key))
    return [key for _, key in sorted(fields)]


def test_schemas_carry_scope_metadata_and_settings(http: httpx.Client) -> None:
    pipelines = http.get("/api/v1/pipelines/schemas").json()["pipelines"]
    for pid, entry in pipelines.items():
        if pid.startswith("test-"):
            continue  # the tests' own small pipelines
        for key, kind in METADATA.items():
            assert isinstance(entry[key], kind), (pid, key, entry.get(key))
        schema = entry["config_schema"]
        assert schema["type"] == "object"
        for mode in entry["supported_modes"]:
            shown = settings_fields(schema, mode)
            assert shown[:3] == ["height", "width", "seed"], (pid, shown)
            for key in shown:
                prop = schema["properties"][key]
                hint = prop["ui"]
                assert isinstance(hint["order"], int) and isinstance(hint["is_load_param"], bool)
                if "component" in hint:
                    assert hint["component"] in COMPOSITE
                else:  # a primitive widget must be inferable, else the app skips the field
                    assert widget(prop) is not None, (pid, key, prop)
        seed = schema["properties"]["seed"]
        assert widget(seed) == "number"  # not a slider over 2⁶³
        assert entry["config_schema"]["properties"]["height"]["ui"]["component"] == "resolution"
        assert "denoising_steps" in entry["mode_defaults"][entry["default_mode"]] or \
            not entry["supports_prompts"]
    # Truthful metadata: what each pipeline actually does.
    assert pipelines["streamdiffusion"]["requires_models"] is True
    assert pipelines["passthrough"]["requires_models"] is False
    assert {i for i, p in pipelines.items() if p["supports_lora"]} == {
        "streamdiffusion", "longlive", "streamdiffusionv2"}
    assert not any(p["supports_quantization"] for p in pipelines.values())
    effect = pipelines["cpu-effect"]["config_schema"]["properties"]
    assert effect["noise_scale"]["ui"] == {"category": "configuration", "order": 41,
                                           "label": "Noise scale", "is_load_param": False,
                                           "component": "noise"}
    assert effect["denoising_step_list"]["ui"]["is_load_param"] is False
    passthrough = pipelines["passthrough"]["config_schema"]["properties"]
    assert "ui" not in passthrough["noise_scale"]  # passthrough has no prompt controls
    sd = pipelines["streamdiffusion"]["config_schema"]["properties"]
    assert widget(sd["cfg_scale"]) == "slider" and widget(sd["dtype"]) == "enum"
    assert sd["similarity_filter"]["ui"]["modes"] == ["video"]


# React keys of Scope's composite Settings blocks (ComplexFields.tsx: `<div key="lora">`, ...).
BLOCK_KEYS = {"vace", "lora", "resolution", "cache", "denoising_steps", "noise", "quantization"}


def test_no_settings_field_shares_a_composite_blocks_react_key(http: httpx.Client) -> None:
    """Scope's Settings panel keys a field by its property name and a composite block by its
    component: a plain field named `lora` beside the LoRA block is a duplicate React key, and
    its text box stayed on the next pipeline's panel (longlive → streamdiffusion in the app).
    The Wan pipelines' built-in LoRA is published as `generator_lora`; loads take both names."""
    from pipeline.registry import get

    pipelines = http.get("/api/v1/pipelines/schemas").json()["pipelines"]
    for pid, entry in pipelines.items():
        for key, prop in entry["config_schema"]["properties"].items():
            if "ui" in prop and key in BLOCK_KEYS:
                assert prop["ui"].get("component") == key, (pid, key, prop["ui"])
    for pid in ("longlive", "streamdiffusionv2"):
        prop = pipelines[pid]["config_schema"]["properties"]["generator_lora"]
        assert prop["ui"]["label"] == "Generator LoRA" and widget(prop) == "text"
        params = get(pid).Params
        assert params.model_validate({"generator_lora": "a/b/l.pt"}).lora == "a/b/l.pt"
        assert params.model_validate({"lora": "a/b/l.pt"}).lora == "a/b/l.pt"  # our own name


# --- loads: an identical load is a no-op; loading_stage says what happens now ------------------


@register
class InitGatedPipeline(Pipeline):
    """Counts its instances; construction waits for `gate` (a model being resolved, say)."""

    id = "test-init-gated"
    name = description = "test: gated construction"
    gate: ClassVar[threading.Event] = threading.Event()
    instances: ClassVar[int] = 0

    def __init__(self, params: LoadParams) -> None:
        super().__init__(params)
        type(self).instances += 1
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")

    def process(self, batch: Sequence[FrameRequest]) -> list[np.ndarray]:
        return [r.frame if r.frame is not None else np.zeros((*r.size, 3), np.uint8)
                for r in batch]


def wait_status(service: PipelineService, status: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while service.status().status != status:
        assert time.monotonic() < deadline, service.status()
        time.sleep(0.01)


def push(service_stream: Any, value: int, pts: int) -> None:
    image = np.full((16, 16, 3), value, np.uint8)
    service_stream.push(InputFrame(decode=lambda: image, pts=pts, time_base=Fraction(1, 90_000),
                                   arrived=time.monotonic()))


def test_an_identical_load_is_a_no_op_and_streams_notice_nothing(
        service: PipelineService) -> None:
    InitGatedPipeline.gate.set()
    service.load_blocking("test-init-gated", {"height": 128}, timeout=20)
    built = InitGatedPipeline.instances
    sink = RecordingSink()
    stream = service.open_stream(sink, offers_video=True)
    push(stream, 10, 0)
    sink.wait(1)
    # Same pipeline, same effective parameters: defaults spelled out, Scope's alias for the
    # seed, and keys of Scope's own pipelines (ignored) are all "the same load".
    for params in ({"height": 128}, {"height": 128, "width": 512, "seed": 42},
                   {"height": 128, "base_seed": 42, "quantization": None, "vae_type": "wan"}):
        service.load("test-init-gated", params)
        assert service.status().status == "loaded"  # at once: nothing was started
    push(stream, 20, 3000)
    sink.wait(2)
    assert InitGatedPipeline.instances == built and not sink.stopped
    assert [int(f.image[0, 0, 0]) for f in sink.frames[:2]] == [10, 20]
    # A different effective load does reload.
    service.load("test-init-gated", {"height": 256})
    wait_status(service, "loaded")
    assert InitGatedPipeline.instances == built + 1


def test_loading_stage_says_what_is_happening_now(service: PipelineService) -> None:
    service.load_blocking("passthrough")
    InitGatedPipeline.gate.clear()
    try:
        service.load("test-init-gated")
        deadline = time.monotonic() + 20
        # The old pipeline is unloaded first; then the new one is being built.
        while service.status().loading_stage != "preparing test-init-gated":
            assert time.monotonic() < deadline, service.status()
            time.sleep(0.01)
        assert service.status().status == "loading"
    finally:
        InitGatedPipeline.gate.set()
    wait_status(service, "loaded")
    assert service.status().loading_stage is None


# --- a WebRTC session driven the way Scope's app drives it -------------------------------------

LIGHT = (220, 220, 220)  # the cpu effect maps brightness to the prompt's palette


def prompt(text: str) -> list[dict[str, Any]]:
    return [{"text": text, "weight": 1.0}]


class ScopeAppPeer:
    """What Scope's app does on Start: load, ICE servers, a VP8-only video transceiver, an audio
    recvonly transceiver, the `parameters` channel, an offer with initialParameters."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.pc = RTCPeerConnection()
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self.frames: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        self.source = NumberedFrames(size=96, fps=20, tint=LIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, initial: dict[str, Any]) -> None:
        await self.http.get("/api/v1/webrtc/ice-servers")
        channel = self.pc.createDataChannel("parameters", ordered=True)
        self.channel = channel
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", self._on_message)
        video = self.pc.addTransceiver(self.source, direction="sendrecv")
        vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs
               if c.mimeType == "video/VP8"]
        video.setCodecPreferences(vp8)
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert "H264" not in self.pc.localDescription.sdp  # VP8 only, as Scope's app offers
        r = await self.http.post("/api/v1/webrtc/offer", json={
            "sdp": self.pc.localDescription.sdp, "type": "offer", "initialParameters": initial})
        assert r.status_code == 200, r.text
        self.session_id = r.json()["sessionId"]
        await self.pc.setRemoteDescription(RTCSessionDescription(r.json()["sdp"], "answer"))
        await asyncio.wait_for(opened.wait(), 20)

    def _on_message(self, raw: str) -> None:
        self.messages.append(json.loads(raw))
        self._arrived.set()

    def _on_track(self, track: Any) -> None:
        if track.kind == "video":
            task = asyncio.ensure_future(self._pump(track))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:  # noqa: BLE001 - the track ended
                return
            if self.frames.full():
                self.frames.get_nowait()  # keep the latest
            self.frames.put_nowait(frame)

    def send(self, update: dict[str, Any]) -> None:
        self.channel.send(json.dumps(update))

    async def message(self, predicate: Any, timeout_s: float = 20.0) -> dict[str, Any]:
        """The first message (seen so far or arriving) matching `predicate`."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._arrived.clear()  # before looking: a message arriving meanwhile sets it again
            for m in self.messages:
                if predicate(m):
                    return m
            await asyncio.wait_for(self._arrived.wait(), max(deadline - time.monotonic(), 0.01))

    async def colour_until(self, predicate: Any, limit: int = 400) -> np.ndarray:
        for _ in range(limit):
            frame = await asyncio.wait_for(self.frames.get(), 20)
            rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
            if predicate(rgb):
                return rgb
        raise AssertionError("no frame matched")


def applied(m: dict[str, Any], **values: Any) -> bool:
    return m["type"] == "parameters_applied" and all(
        m["parameters"].get(k) == v for k, v in values.items())


async def test_a_session_driven_like_scopes_app(server: Server) -> None:
    load = {"pipelines": [{"node_id": "main", "pipeline_id": "cpu-effect",
                           "load_params": {"height": 512, "width": 512, "base_seed": 42,
                                           "quantization": None, "vace_enabled": True}}]}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        assert (await http.post("/api/v1/pipeline/load", json=load)).status_code == 200
        deadline = time.monotonic() + 60
        while (await http.get("/api/v1/pipeline/status")).json()["status"] != "loaded":
            assert time.monotonic() < deadline  # Scope's app polls status until loaded
            await asyncio.sleep(0.1)
        peer = ScopeAppPeer(http)
        try:
            await peer.start({"prompts": prompt("red"), "noise_scale": 0.0,
                              "denoising_step_list": [999]})
            await peer.message(lambda m: applied(m, prompts=prompt("red")))
            red = await peer.colour_until(lambda c: c[0] > c[2] + 60)
            # About a second after connecting Scope's app posts the same load again: a no-op.
            before = len(peer.source.sent)
            r = await http.post("/api/v1/pipeline/load", json=load)
            assert r.status_code == 200
            assert (await http.get("/api/v1/pipeline/status")).json()["status"] == "loaded"
            # Partial updates, one key at a time, as its controls send them.
            peer.send({"noise_scale": 0.1})
            peer.send({"denoising_step_list": [999, 500]})
            peer.send({"prompts": prompt("blue")})
            await peer.message(lambda m: applied(m, prompts=prompt("blue"), noise_scale=0.1,
                                                 denoising_step_list=[999, 500]))
            blue = await peer.colour_until(lambda c: c[2] > c[0] + 60)
            assert len(peer.source.sent) > before  # the stream went on through the reload
            kinds = [m["type"] for m in peer.messages]
            assert "parameters_updated" not in kinds  # never an echo of its own updates
            assert "stream_stopped" not in kinds
            # A change from elsewhere (HTTP): Scope's parameters_updated, only its keys.
            r = await http.post("/api/v1/session/parameters",
                                json={"prompts": prompt("green"), "input_mode": "video",
                                      "prompt_interpolation_method": "slerp"})
            assert r.status_code == 200 and r.json()["sessions"] == 1
            update = await peer.message(lambda m: m["type"] == "parameters_updated")
            assert update == {"type": "parameters_updated",
                              "parameters": {"prompts": prompt("green")}}
            await peer.colour_until(lambda c: c[1] > c[0] + 40 and c[1] > c[2] + 40)
            current = (await http.get("/api/v1/session/parameters",
                                      params={"session_id": peer.session_id})).json()
            assert current["parameters"]["prompts"] == prompt("green")
            print(f"scope app session: red {red.round()}, blue {blue.round()}")
        finally:
            await peer.pc.close()


@pytest.mark.parametrize(("body", "query", "status"), [
    ({}, {}, 400),
    ({"unknown": 1}, {}, 400),
    ({"noise_scale": 5}, {}, 422),
    ({"prompts": "blue"}, {}, 422),
    ({"noise_scale": 0.5}, {"session_id": "nope"}, 404),
    ({"noise_scale": 0.5}, {"session_id": "x" * 100}, 422),
])
def test_session_parameters_bad_input(http: httpx.Client, body: dict[str, Any],
                                      query: dict[str, str], status: int) -> None:
    r = http.post("/api/v1/session/parameters", json=body, params=query)
    assert r.status_code == status and "detail" in r.json()


def test_session_parameters_without_sessions(http: httpx.Client) -> None:
    assert http.get("/api/v1/session/parameters").json() == {"parameters": {}}
    r = http.post("/api/v1/session/parameters", json={"noise_scale": 0.5})
    assert r.json()["sessions"] == 0


# --- the calls Scope's app makes at page load ---------------------------------------------------


def check_health(body: Any) -> None:
    assert body["status"] == "healthy" and isinstance(body["server_start_time"], float)
    assert isinstance(body["version"], str)


def check_status(body: Any) -> None:
    assert body["status"] in ("not_loaded", "loading", "loaded", "error")
    assert {"pipeline_id", "load_params", "error", "loading_stage", "produces_video",
            "produces_audio"} <= body.keys()
    assert body["loaded_lora_adapters"] == []


def check_hardware(body: Any) -> None:
    assert body["vram_gb"] is None or body["vram_gb"] > 0  # picks Scope's quantization default
    assert (body["spout_available"], body["ndi_available"], body["syphon_available"]) == (
        False, False, False)
    assert body["cpu_count"] >= 1 and (body["ram_gb"] is None or body["ram_gb"] > 0)
    assert body["cuda_available"] == bool(body["gpus"]) == (body["gpu_name"] is not None)


def check_onboarding(body: Any) -> None:
    assert body["completed"] in (True, False) and "inference_mode" in body


def check_cloud(body: Any) -> None:
    assert (body["connected"], body["connecting"], body["error"]) == (False, False, None)


def check_logs(body: Any) -> None:
    assert isinstance(body["lines"], list) and isinstance(body["offset"], int)


def check_tempo(body: Any) -> None:
    assert (body["enabled"], body["beats_per_bar"], body["beat_state"]) == (False, 4, None)


def check_disabled(body: Any) -> None:
    assert body["enabled"] is False and body["listening"] is False


def check_osc_listening(body: Any) -> None:
    """A loopback server listens for OSC on UDP at its HTTP port number, as Scope does."""
    assert body["enabled"] is True and body["listening"] is True
    assert body["host"] == "127.0.0.1" and isinstance(body["port"], int)


def equals(expected: Any) -> Any:
    def check(body: Any) -> None:
        assert body == expected

    return check


# docs/scope-app.md's "page load" table: each call and what Scope's app reads from its answer.
PAGE_LOAD = {
    "GET /health": check_health,
    "GET /api/v1/pipelines/schemas": lambda body: body["pipelines"]["cpu-effect"],
    "GET /api/v1/pipeline/status": check_status,
    "GET /api/v1/hardware/info": check_hardware,
    "GET /api/v1/input-sources": equals({"input_sources": []}),
    "GET /api/v1/loras": equals({"lora_files": []}),
    "GET /api/v1/plugins": equals({"plugins": [], "total": 0, "failed_plugins": []}),
    "GET /api/v1/nodes/definitions": equals({"nodes": []}),
    "GET /api/v1/onboarding/status": check_onboarding,
    "PUT /api/v1/onboarding/status": check_onboarding,
    "GET /api/v1/cloud/status": check_cloud,
    "GET /api/v1/logs/tail?lines=200&since_offset=0": check_logs,
    "GET /api/v1/tempo/status": check_tempo,
    "GET /api/v1/tempo/sources": equals({"sources": {}}),
    "GET /api/v1/dmx/status": check_disabled,
    "GET /api/v1/osc/status": check_osc_listening,
    "POST /api/v1/osc/inventory": equals({"count": 1}),
}
BODIES = {
    "PUT /api/v1/onboarding/status": {"inference_mode": "local"},
    "POST /api/v1/osc/inventory": {"paths": [{"osc_address": "/scope/noise_scale",
                                              "type": "float", "min": 0, "max": 1}]},
}


@pytest.mark.parametrize("call", list(PAGE_LOAD))
def test_page_load_call_answers_in_scopes_shape(http: httpx.Client, call: str) -> None:
    method, path = call.split(" ")
    r = http.request(method, path, json=BODIES.get(call))
    assert 200 <= r.status_code < 300, r.text
    PAGE_LOAD[call](r.json())


def test_page_load_osc_stream_is_an_open_quiet_event_stream(http: httpx.Client) -> None:
    with http.stream("GET", "/api/v1/osc/stream") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        first = next(stream.iter_lines())
        assert first.startswith(":")  # a comment: no OSC events, ever


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/osc/inventory", {}),
    ("POST", "/api/v1/osc/inventory", {"paths": [{"type": "float"}]}),
    ("POST", "/api/v1/osc/inventory", {"paths": [{"osc_address": "/a", "type": "f"}] * 2001}),
    ("POST", "/api/v1/osc/inventory", [1]),
])
def test_not_here_routes_refuse_bad_input(http: httpx.Client, method: str, path: str,
                                          body: Any) -> None:
    r = http.request(method, path, json=body)
    assert r.status_code == 422 and "detail" in r.json()


def test_the_osc_stream_ends_cleanly_when_the_server_stops() -> None:
    outcome: dict[str, Any] = {}
    opened = threading.Event()

    def read(url: str) -> None:
        try:
            with httpx.stream("GET", f"{url}/api/v1/osc/stream", timeout=30) as stream:
                for _ in stream.iter_lines():
                    opened.set()
            outcome["ended"] = "cleanly"
        except httpx.HTTPError as exc:  # cut off by the graceful-shutdown timeout
            outcome["ended"] = repr(exc)

    with serve_in_thread(pipeline=None) as srv:
        reader = threading.Thread(target=read, args=(srv.url,), daemon=True)
        reader.start()
        assert opened.wait(20)
    reader.join(30)
    assert outcome.get("ended") == "cleanly"


# --- onboarding ----------------------------------------------------------------------------------


def test_onboarding_status_persists_across_restarts(tmp_path: Any) -> None:
    with serve_in_thread(pipeline=None, data_dir=tmp_path) as srv:
        url = f"{srv.url}/api/v1/onboarding/status"
        assert httpx.get(url).json() == {"completed": False, "inference_mode": None,
                                         "onboarding_style": None, "referral_source": None,
                                         "use_case": None}
        # Scope's app sends one or two keys at a time; the others stay.
        assert httpx.put(url, json={"inference_mode": "local"}).status_code == 200
        assert httpx.put(url, json={"completed": True}).json()["inference_mode"] == "local"
        for bad in ({"completed": "yes"}, {"inference_mode": "mars"}, {"use_case": "x" * 201},
                    [1, 2], "text"):
            r = httpx.put(url, json=bad)
            assert r.status_code == 422 and "detail" in r.json(), bad
    assert json.loads((tmp_path / "onboarding.json").read_text())["completed"] is True
    with serve_in_thread(pipeline=None, data_dir=tmp_path) as srv:
        status = httpx.get(f"{srv.url}/api/v1/onboarding/status").json()
        assert (status["completed"], status["inference_mode"]) == (True, "local")


# --- workflow/resolve ----------------------------------------------------------------------------


def scope_workflow(pipelines: list[dict[str, Any]], nodes: list[dict[str, Any]] | None = None,
                   name: str = "test") -> dict[str, Any]:
    """A workflow as Scope's app posts it (its starter workflows' format)."""
    return {"format": "scope-workflow", "format_version": "1.0",
            "metadata": {"name": name, "created_at": "2026-03-20T22:12:35.393Z",
                         "scope_version": "0.1.8"},
            "pipelines": pipelines, "prompts": [{"text": "a cat", "weight": 1}],
            "graph": {"nodes": nodes or [], "edges": []}}


def builtin(pipeline_id: str, **extra: Any) -> dict[str, Any]:
    return {"pipeline_id": pipeline_id, "pipeline_version": "1.0.0",
            "source": {"type": "builtin"}, "loras": [], "params": {}, **extra}


def test_the_camera_preview_starter_resolves(http: httpx.Client) -> None:
    workflow = scope_workflow([builtin("passthrough")], name="Camera Preview", nodes=[
        {"id": "input", "type": "source", "source_mode": "camera", "x": 0, "y": 0},
        {"id": "passthrough", "type": "pipeline", "pipeline_id": "passthrough"},
        {"id": "output", "type": "sink"}])
    plan = http.post("/api/v1/workflow/resolve", json=workflow).json()
    assert plan == {"can_apply": True, "warnings": [], "items": [
        {"kind": "pipeline", "name": "passthrough", "status": "ok", "detail": None,
         "action": None, "can_auto_resolve": False}]}


def test_resolve_reports_what_this_server_lacks(http: httpx.Client) -> None:
    lora = {"id": "lora-0", "filename": "dissolve.safetensors", "weight": 1.5,
            "merge_mode": "permanent_merge", "provenance": {"source": "civitai",
                                                            "version_id": "2680702"}}
    workflow = scope_workflow(
        [builtin("longlive-x", loras=[lora], params={"height": 512}),
         {**builtin("yolo_mask"), "source": {"type": "git", "plugin_name": "scope-yolo-mask"}},
         builtin("cpu-effect", params={"height": 10**9})],
        nodes=[{"id": "n", "type": "node", "node_type_id": "llm"},
               {"id": "o", "type": "output"}, {"id": "w", "type": "weird"}])
    plan = http.post("/api/v1/workflow/resolve", json=workflow).json()
    items = {(i["kind"], i["name"]): i for i in plan["items"]}
    assert plan["can_apply"] is False
    assert items[("pipeline", "longlive-x")]["status"] == "missing"
    assert "cpu-effect" in items[("pipeline", "longlive-x")]["detail"]  # says what we have
    assert items[("plugin", "scope-yolo-mask")]["status"] == "missing"
    assert items[("lora", "dissolve.safetensors")]["status"] == "missing"
    assert items[("pipeline", "cpu-effect")]["status"] == "ok"
    text = " ".join(plan["warnings"])
    for expected in ("plugin node", "Spout", "'weird'", "one pipeline per stream", "height"):
        assert expected in text, (expected, plan["warnings"])
    # A LoRA alone does not block: the pipeline runs without it.
    plan = http.post("/api/v1/workflow/resolve",
                     json=scope_workflow([builtin("cpu-effect", loras=[lora])])).json()
    assert plan["can_apply"] is True and plan["items"][1]["status"] == "missing"


@pytest.mark.parametrize("body", [[], "x", {"pipelines": "x"}, {"pipelines": [{}]},
                                  {"pipelines": [{"pipeline_id": "p" * 301}]},
                                  {"pipelines": [builtin("p")] * 65},
                                  {"graph": {"nodes": [{"id": "a"}]}}])
def test_resolve_bad_input_is_a_422(http: httpx.Client, body: Any) -> None:
    r = http.post("/api/v1/workflow/resolve", json=body)
    assert r.status_code == 422 and "detail" in r.json()


# --- logs ----------------------------------------------------------------------------------------


def test_logs_tail_follows_the_server_log_without_secrets() -> None:
    key = "sekret-key-123456"
    with serve_in_thread(pipeline=None, api_key=key) as srv:
        auth = {"Authorization": f"Bearer {key}"}
        start = httpx.get(f"{srv.url}/api/v1/logs/tail", headers=auth).json()["offset"]
        logger = logging.getLogger("signaling.test")
        logger.warning("a client sent %s and hf_abcdefghijklmnopqrstuvwx", key)
        logger.error("Authorization: Bearer abc.def-ghi token=xyz123")
        body = httpx.get(f"{srv.url}/api/v1/logs/tail", headers=auth,
                         params={"lines": 200, "since_offset": start}).json()
        ours = [line for line in body["lines"] if "signaling.test" in line]
        assert len(ours) == 2 and " - WARNING - " in ours[0] and " - ERROR - " in ours[1]
        text = "\n".join(ours)
        for secret in (key, "hf_abcdefghijklmnopqrstuvwx", "abc.def-ghi", "xyz123"):
            assert secret not in text
        assert "***" in ours[0]
        # Only newer lines next time; a bounded number at once.
        again = httpx.get(f"{srv.url}/api/v1/logs/tail", headers=auth,
                          params={"since_offset": body["offset"]}).json()
        assert not [line for line in again["lines"] if "signaling.test" in line]
        assert len(httpx.get(f"{srv.url}/api/v1/logs/tail", headers=auth,
                             params={"lines": 1}).json()["lines"]) <= 1
        current = httpx.get(f"{srv.url}/api/v1/logs/current", headers=auth)
        assert current.headers["content-type"].startswith("text/plain")
        assert "signaling.test" in current.text and key not in current.text
        for params in ({"lines": 0}, {"lines": 10**6}, {"since_offset": -1},
                       {"lines": "many"}):
            r = httpx.get(f"{srv.url}/api/v1/logs/tail", headers=auth, params=params)
            assert r.status_code == 422, params
        assert httpx.get(f"{srv.url}/api/v1/logs/tail").status_code == 401


def test_a_log_offset_from_before_a_restart_starts_over() -> None:
    buffer = LogBuffer(max_lines=3)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "line %d", (0,), None)
    for i in range(5):
        record.args = (i,)
        buffer.handle(record)
    lines, offset = buffer.tail(10, 0)
    assert offset == 5 and [line[-6:] for line in lines] == ["line 2", "line 3", "line 4"]
    assert buffer.tail(10, 4)[0][-1].endswith("line 4") and len(buffer.tail(10, 4)[0]) == 1
    assert len(buffer.tail(10, 999)[0]) == 3  # a stale offset (server restarted): all kept


def test_capability_flags_bring_scopes_composite_controls() -> None:
    """A pipeline that says it supports VACE, cache management, KV-cache bias and LoRAs gets
    Scope's vace / cache / lora controls on the matching keys (live ones marked runtime)."""

    class Capable(InitGatedPipeline):
        id = "test-capable"
        supports_vace = supports_cache_management = supports_kv_cache_bias = True
        supports_lora = True

    props = config_schema(Capable)["properties"]
    assert props["vace_enabled"]["ui"]["component"] == "vace"
    assert props["vace_enabled"]["ui"]["is_load_param"] is True
    assert props["vace_context_scale"]["ui"] == {
        "category": "configuration", "order": 31, "label": "VACE scale", "is_load_param": False,
        "component": "vace"}
    assert props["manage_cache"]["ui"]["component"] == "cache"
    assert props["kv_cache_attention_bias"]["ui"]["component"] == "cache"
    assert props["lora_scales"]["ui"]["component"] == "lora"
    plain = config_schema(InitGatedPipeline)["properties"]
    assert not any("ui" in plain[k] for k in ("vace_enabled", "manage_cache", "lora_scales"))
