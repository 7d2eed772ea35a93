"""Capacity that junk cannot hold: offers that never connect have their own bound (and a
per-client one on public binds), cost no pipeline work, and are reaped early when ICE has
nothing to check; the streaming slots stay for clients that connect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from signaling.client import LiveV2VClient, NumberedFrames, read_number
from signaling.sessions import SessionRegistry
from tests.conftest import serve_in_thread


async def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def junk_offers(url: str, count: int, *, candidates: bool = True,
                      local_address: str | None = None) -> AsyncIterator[list[httpx.Response]]:
    """`count` offers from real peers that never apply the answer (their peer connections stay
    open meanwhile, as a stalled or hostile client's would). Text mode (receive-only)."""
    peers: list[RTCPeerConnection] = []
    transport = httpx.AsyncHTTPTransport(local_address=local_address) if local_address else None
    try:
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30) as http:
            responses = []
            for _ in range(count):
                pc = RTCPeerConnection()
                peers.append(pc)
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                sdp = pc.localDescription.sdp
                if not candidates:  # a trickling client that never sends its candidates
                    sdp = "".join(line for line in sdp.splitlines(keepends=True)
                                  if not line.startswith("a=candidate"))
                responses.append(await http.post("/api/v1/webrtc/offer",
                                                  json={"sdp": sdp, "type": "offer"}))
            yield responses
    finally:
        await asyncio.gather(*(pc.close() for pc in peers))


async def close_pending(url: str, sessions: SessionRegistry) -> None:
    """DELETE what is still pending (as its client would), then wait until it is gone."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for session in sessions.pending():
            assert (await http.delete(f"/api/v1/webrtc/offer/{session.id}")).status_code == 204
    await wait_for(lambda: len(sessions) == 0)


async def stream_a_few_frames(url: str) -> LiveV2VClient:
    client = LiveV2VClient(url)
    source = NumberedFrames(size=64, fps=20)
    await client.connect(source)
    numbers = {read_number((await client.recv(timeout_s=30)).to_ndarray(format="rgb24"))
               for _ in range(5)}
    assert len(numbers) >= 2, numbers  # live frames, not one repeated
    return client


async def test_offers_that_never_connect_do_not_hold_the_streaming_slots() -> None:
    with serve_in_thread(pipeline="cpu-effect", max_sessions=2, max_pending=10,
                         connect_timeout_s=300) as server:
        sessions = server.app.state.sessions
        async with junk_offers(server.url, 8) as answered:
            assert [r.status_code for r in answered] == [200] * 8
            assert len(sessions.pending()) == 8
            # The junk holds no pipeline work (its text-mode streams are held).
            assert all(s.stream.held and s.stream.produced == 0 for s in sessions.pending())

            # Well-behaved clients still get both streaming slots.
            first = await stream_a_few_frames(server.url)
            second = await stream_a_few_frames(server.url)
            try:
                assert len(sessions.connected()) == 2
                # Real capacity: 503 with Retry-After.
                async with httpx.AsyncClient(base_url=server.url) as http:
                    async with junk_offers(server.url, 1) as extra:
                        assert extra[0].status_code == 503
                        assert "capacity (2 sessions)" in extra[0].json()["detail"]
                        assert extra[0].headers["retry-after"]
                    await first.stop()
                    await wait_for(lambda: len(sessions.connected()) == 1)
                    # A freed slot is a slot again, junk or not.
                    third = await stream_a_few_frames(server.url)
                    await third.close()
                    status = (await http.get("/api/v1/pipeline/status")).json()["status"]
                    assert status == "loaded"
            finally:
                await first.close()
                await second.close()
            assert all(s.stream.produced == 0 for s in sessions.pending())

            # The pending bound: past it, 503 (these are the server's, not one client's).
            await wait_for(lambda: len(sessions.connected()) == 0)
            async with junk_offers(server.url, 3) as more:
                codes = [r.status_code for r in more]
                assert codes == [200, 200, 503], codes
                assert "being set up (10)" in more[2].json()["detail"]
                assert more[2].headers["retry-after"]
        await close_pending(server.url, sessions)


async def test_an_offer_without_candidates_is_reaped_before_the_connect_timeout() -> None:
    with serve_in_thread(pipeline="cpu-effect", ice_idle_timeout_s=1.0,
                         connect_timeout_s=300) as server:
        sessions = server.app.state.sessions
        async with junk_offers(server.url, 1, candidates=False) as silent, \
                junk_offers(server.url, 1) as checking:
            assert silent[0].status_code == checking[0].status_code == 200
            silent_id, checking_id = silent[0].json()["sessionId"], checking[0].json()["sessionId"]
            await wait_for(lambda: sessions.get(silent_id) is None)
            # The one with candidates gets the full connect timeout (ICE may still succeed).
            assert sessions.get(checking_id) is not None
        await close_pending(server.url, sessions)


async def test_per_client_bound_on_pending_offers_on_a_public_bind() -> None:
    with serve_in_thread(pipeline="cpu-effect", host="0.0.0.0", max_pending_per_client=2,
                         connect_timeout_s=300) as server:
        url = server.url.replace("0.0.0.0", "127.0.0.1").replace("localhost", "127.0.0.1")
        sessions = server.app.state.sessions
        async with junk_offers(url, 3) as one:
            codes = [r.status_code for r in one]
            assert codes == [200, 200, 429], codes
            assert "limit 2" in one[2].json()["detail"]
            assert one[2].headers["retry-after"]
            # Another address is another client.
            async with junk_offers(url, 1, local_address="127.0.0.2") as other:
                assert other[0].status_code == 200
        await close_pending(url, sessions)
    # On a loopback bind every client shares 127.0.0.1: no per-client bound there.
    with serve_in_thread(pipeline="cpu-effect", max_pending_per_client=2,
                         connect_timeout_s=300) as server:
        async with junk_offers(server.url, 3) as local:
            assert [r.status_code for r in local] == [200] * 3
        await close_pending(server.url, server.app.state.sessions)


async def test_a_client_connecting_when_the_slots_filled_meanwhile_is_told_why() -> None:
    """Both offers are answered while the one slot is free; the second peer to connect is
    refused on its channel (stream_stopped) instead of overshooting the capacity."""
    with serve_in_thread(pipeline="passthrough", max_sessions=1) as server:
        sessions = server.app.state.sessions
        peers: list[RTCPeerConnection] = []
        inboxes: list[asyncio.Queue[dict]] = []
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                answers = []
                for _ in range(2):  # both offers first: neither has connected yet
                    pc = RTCPeerConnection()
                    inbox: asyncio.Queue[dict] = asyncio.Queue()
                    channel = pc.createDataChannel("parameters", ordered=True)
                    channel.on("message", lambda raw, q=inbox: q.put_nowait(json.loads(raw)))
                    pc.addTrack(NumberedFrames(size=64, fps=20))
                    await pc.setLocalDescription(await pc.createOffer())
                    r = await http.post("/api/v1/webrtc/offer",
                                        json={"sdp": pc.localDescription.sdp, "type": "offer"})
                    assert r.status_code == 200, r.text
                    peers.append(pc)
                    inboxes.append(inbox)
                    answers.append(r.json())
            for pc, answer in zip(peers, answers, strict=True):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"],
                                                                    type="answer"))

            async def stopped(inbox: asyncio.Queue[dict]) -> dict:
                while (message := await inbox.get()).get("type") != "stream_stopped":
                    pass
                return message

            waits = [asyncio.ensure_future(stopped(q)) for q in inboxes]
            done, rest = await asyncio.wait(waits, timeout=60,
                                            return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
            assert done, "neither session was refused"
            assert "capacity (1 sessions)" in next(iter(done)).result()["error_message"]
            await wait_for(lambda: len(sessions) == 1 and len(sessions.connected()) == 1)
        finally:
            await asyncio.gather(*(pc.close() for pc in peers))
