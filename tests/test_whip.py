"""WHIP ingest and WHEP playback with our own aiortc clients (third-party clients:
test_whip_clients.py): the ingest is an ordinary session, viewers play its processed output."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from signaling.client import ApiError, LiveV2VClient, NumberedFrames, WhipWhepClient
from signaling.ice import IceServer
from signaling.messages import MessageError
from signaling.whip import link_headers, parse_sdpfrag, query_parameters
from tests.conftest import Server, serve_in_thread

LIGHT = (220, 220, 220)  # the effect maps brightness to the palette: bright shows it best
RED = {"prompt": "red", "noise_scale": "0.0", "denoising_step_list": "[999]"}
SDP = {"Content-Type": "application/sdp"}


def redness(frame) -> float:
    """Mean R − B: large for the effect's red, ~0 for the grey input."""
    rgb = frame.to_ndarray(format="rgb24").reshape(-1, 3).astype(np.float32).mean(axis=0)
    return float(rgb[0] - rgb[2])


async def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def frame_where(client: WhipWhepClient, predicate, limit: int = 100):
    for _ in range(limit):
        frame = await client.recv(timeout_s=20)
        if predicate(frame):
            return frame
    raise AssertionError("no frame matched")


async def drain(client: WhipWhepClient) -> None:
    """Read frames until the track ends (MediaStreamError) or 200 frames have come."""
    for _ in range(200):
        await asyncio.wait_for(client.remote.recv(), 20)


async def offer_sdp(direction: str = "sendonly") -> str:
    pc = RTCPeerConnection()
    if direction == "sendonly":
        pc.addTransceiver(NumberedFrames(size=64), direction="sendonly")
    else:
        pc.addTransceiver("video", direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


@pytest.fixture(scope="module")
def server() -> Server:
    with serve_in_thread(pipeline="cpu-effect") as srv:
        yield srv


async def test_whip_ingest_is_a_session_and_whep_viewers_play_its_output(server: Server) -> None:
    sessions = server.app.state.sessions
    async with WhipWhepClient(server.url) as whip, httpx.AsyncClient(base_url=server.url) as http:
        source = NumberedFrames(size=128, fps=20, tint=LIGHT)
        response = await whip.publish(source, RED)
        assert response.headers["content-type"] == "application/sdp"
        assert response.headers["location"] == f"/api/v1/whip/{whip.session_id}"
        assert response.headers["etag"].startswith('"')
        session = sessions.get(whip.session_id)
        assert session is not None and session.ingest == "whip"
        await wait_for(lambda: session.counters()["out"] > 5)  # frames processed
        status = (await http.get("/api/v1/pipeline/status")).json()
        assert sum(w["sessions"] for w in status["workers"]) >= 1
        params = (await http.get("/api/v1/session/parameters",
                                 params={"session_id": whip.session_id})).json()["parameters"]
        assert params["prompts"] == [{"text": "red", "weight": 1.0}]

        viewers = [WhipWhepClient(server.url) for _ in range(2)]
        try:
            await viewers[0].play(whip.session_id)
            await viewers[1].play()  # the latest ingest
            for viewer in viewers:
                # The processed output (red), not the light grey input.
                assert redness(await frame_where(viewer, lambda f: redness(f) > 60)) > 60
            assert session.fanout.viewers == 2

            # One viewer leaving disturbs neither the producer nor the other viewer.
            assert await viewers[0].stop() == 200
            await wait_for(lambda: session.fanout.viewers == 1)
            before = session.counters()["out"]
            await viewers[1].recv()
            await wait_for(lambda: session.counters()["out"] > before + 5)

            # Parameters change over HTTP like any session's; the viewer sees it.
            r = await http.post("/api/v1/session/parameters",
                                params={"session_id": whip.session_id},
                                json={"prompts": [{"text": "blue", "weight": 1.0}]})
            assert r.status_code == 200 and r.json()["sessions"] == 1
            await frame_where(viewers[1], lambda f: redness(f) < -60)

            # The producer ends: the remaining viewer's track ends too (no frozen frame).
            assert await whip.stop() == 200
            with pytest.raises(MediaStreamError):
                await drain(viewers[1])
            await wait_for(lambda: not sessions.viewers() and sessions.get(whip.session_id)
                           is None)
        finally:
            for viewer in viewers:
                await viewer.close()


async def test_an_offer_can_watch_another_session(server: Server) -> None:
    async with LiveV2VClient(server.url) as producer, LiveV2VClient(server.url) as watcher:
        await producer.connect(NumberedFrames(size=128, fps=20, tint=LIGHT),
                               {"prompts": [{"text": "red", "weight": 1.0}],
                                "noise_scale": 0.0, "denoising_step_list": [999]})
        answer = await watcher.connect(None, {"watch": producer.session_id},
                                       direction="recvonly")
        assert answer["sessionId"].startswith("whep-")
        for _ in range(100):
            if redness(await watcher.recv(timeout_s=20)) > 60:
                break
        else:
            raise AssertionError("the watcher never saw the producer's red output")
        assert await watcher.stop() == 204
        await producer.recv()  # the producer carries on
        with pytest.raises(ApiError) as err:
            async with LiveV2VClient(server.url) as lost:
                await lost.connect(None, {"watch": "nobody"}, direction="recvonly")
        assert err.value.status == 404


async def test_whip_errors_are_the_rfcs(server: Server) -> None:
    url = f"{server.url}/api/v1/whip"
    offer = await offer_sdp()
    async with httpx.AsyncClient(timeout=20) as http:
        r = await http.post(url, content=offer, headers={"Content-Type": "application/json"})
        assert r.status_code == 415 and r.headers["accept-post"] == "application/sdp"
        assert (await http.post(url, content="v=0\r\nnonsense", headers=SDP)).status_code == 400
        r = await http.post(url, content=await offer_sdp("recvonly"), headers=SDP,
                            params={"prompt": "x", "noise_scale": "2"})
        assert r.status_code == 400 and "noise_scale" in r.json()["detail"]
        r = await http.post(url, content=offer, headers=SDP, params={"promt": "x"})
        assert r.status_code == 400 and "promt" in r.json()["detail"]
        assert (await http.get(url)).status_code == 405
        assert (await http.patch(f"{url}/nope", content="a=end-of-candidates",
                                 headers={"Content-Type": "application/trickle-ice-sdpfrag"})
                ).status_code == 404
        assert (await http.delete(f"{url}/nope")).status_code == 404
        assert (await http.post(f"{server.url}/api/v1/whep/nope", content=await offer_sdp(
            "recvonly"), headers=SDP)).status_code == 404
        r = await http.options(url)
        assert r.status_code == 204 and "application/sdp" in r.headers["accept-post"]


async def test_whip_trickle_patch_and_ice_restart(server: Server) -> None:
    async with WhipWhepClient(server.url) as whip, httpx.AsyncClient(timeout=20) as http:
        response = await whip.publish(NumberedFrames(size=64))
        resource = server.url + response.headers["location"]
        etag = response.headers["etag"]
        frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
        sdp = whip.pc.localDescription.sdp
        ufrag = next(x for x in sdp.splitlines() if x.startswith("a=ice-ufrag:"))
        pwd = next(x for x in sdp.splitlines() if x.startswith("a=ice-pwd:"))
        body = (f"{ufrag}\r\n{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n"
                "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n")
        r = await http.patch(resource, content=body, headers={**frag, "If-Match": etag})
        assert r.status_code == 204, r.text
        r = await http.patch(resource, content=body, headers={**frag, "If-Match": '"stale"'})
        assert r.status_code == 412
        restart = body.replace(ufrag, "a=ice-ufrag:newfrag")
        assert (await http.patch(resource, content=restart, headers=frag)).status_code == 422
        r = await http.patch(resource, content="a=candidate:garbage", headers=frag)
        assert r.status_code == 400
        assert (await http.patch(resource, content=body, headers=SDP)).status_code == 415


def test_whip_needs_the_api_key_and_refuses_when_full() -> None:
    with serve_in_thread(pipeline="cpu-effect", api_key="k3y", max_sessions=1) as srv:
        url = f"{srv.url}/api/v1/whip"

        async def run() -> None:
            offer = await offer_sdp()
            async with httpx.AsyncClient(timeout=20) as http:
                r = await http.post(url, content=offer, headers=SDP)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                assert (await http.options(url)).status_code == 401
            async with WhipWhepClient(srv.url, api_key="k3y") as whip:
                await whip.publish(NumberedFrames(size=64))
                sessions = srv.app.state.sessions
                await wait_for(lambda: sessions.connected())
                async with httpx.AsyncClient(timeout=20) as http:
                    r = await http.post(url, content=offer,
                                        headers={**SDP, "Authorization": "Bearer k3y"})
                assert r.status_code == 503 and r.headers["retry-after"]

        asyncio.run(run())


async def test_osc_steers_a_whip_ingest_seen_through_whep(server: Server) -> None:
    """A WHIP ingest is a session like any other: an OSC prompt to its id reaches it."""
    from pythonosc.udp_client import SimpleUDPClient

    async with httpx.AsyncClient(base_url=server.url) as http:
        status = (await http.get("/api/v1/osc/status")).json()
    assert status["listening"], status
    osc = SimpleUDPClient(status["host"], status["port"])
    async with WhipWhepClient(server.url) as whip, WhipWhepClient(server.url) as viewer:
        await whip.publish(NumberedFrames(size=128, fps=20, tint=LIGHT),
                           {**RED, "prompt": "blue"})
        await viewer.play(whip.session_id)
        await frame_where(viewer, lambda f: redness(f) < -60)  # blue
        osc.send_message(f"/livev2v/{whip.session_id}/prompt", "red")
        await frame_where(viewer, lambda f: redness(f) > 60)


def test_ice_servers_become_link_headers() -> None:
    links = link_headers([IceServer(urls="stun:stun.example.net:3478"),
                          IceServer(urls=["turn:t.example.net?transport=udp",
                                          "turns:t.example.net:443"],
                                    username="u", credential='p"w')])
    assert links == [
        '<stun:stun.example.net:3478>; rel="ice-server"',
        '<turn:t.example.net?transport=udp>; rel="ice-server"; username="u"; '
        'credential="p\\"w"; credential-type="password"',
        '<turns:t.example.net:443>; rel="ice-server"; username="u"; credential="p\\"w"; '
        'credential-type="password"']


def test_query_parameters_are_validated_like_channel_messages() -> None:
    update = query_parameters([("prompt", "ink wash"), ("noise_scale", "0.25"),
                               ("denoising_step_list", "[700,500]"), ("paused", "false")])
    assert update.given() == {"prompts": [{"text": "ink wash", "weight": 1.0}],
                              "noise_scale": 0.25, "denoising_step_list": [700, 500],
                              "paused": False}
    assert query_parameters([]) is None
    for bad in ([("noise_scale", "NaN")], [("noise_scale", "2")], [("seed", "-1")],
                [("prompt", "a"), ("prompt", "b")], [("nope", "1")],
                [("denoising_step_list", "[500,700]")]):
        with pytest.raises(MessageError):
            query_parameters(bad)


def test_sdpfrag_parsing() -> None:
    frag = parse_sdpfrag("a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
                         "m=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
                         "a=candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host\r\n"
                         "a=end-of-candidates\r\n")
    assert (frag.ufrag, frag.pwd, frag.end_of_candidates) == ("EsAw", "P2uYro0UCOQ4zxjKXaWCBui1",
                                                              True)
    assert [(c.candidate[:11], c.sdpMid) for c in frag.candidates] == [("candidate:1", "0")]
    with pytest.raises(ValueError, match="not an SDP line"):
        parse_sdpfrag("garbage")
