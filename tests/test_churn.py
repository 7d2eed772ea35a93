"""Churn: many sessions opened and closed (politely, abruptly, or never connected) against one
server leave no sessions, streams, tasks, threads or file descriptors behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import threading
import time

import httpx
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from signaling.client import LiveV2VClient, NumberedFrames, WhipWhepClient
from tests.conftest import ROOT, serve_in_thread

SESSIONS = int(os.environ.get("CHURN_SESSIONS", "200"))
AT_ONCE = 8
CONNECT_TIMEOUT_S = 20.0
"""How long the server gives a session to connect before reaping it. Never-connecting sessions
wait this long; it must not be short, or a real client whose ICE+DTLS handshake is slow on a busy
machine (over 2 s, seen) is reaped mid-handshake and then waits forever for its first frame."""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


POOL = "sheddable"
"""The encoders' thread pool (`signaling.encoder`): it grows on demand up to its max_workers and
keeps its idle threads, so how many it holds depends on the busiest moment so far, not on what
is still open. It is counted apart, against its bound."""


def own_threads() -> int:
    """Threads but the encoders' bounded pool (`pool_threads`, checked against its bound)."""
    return sum(1 for t in threading.enumerate() if not t.name.startswith(POOL))


def pool_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(POOL))


async def one_session(url: str, i: int) -> str:
    kind = ("polite", "abrupt", "never-connects")[i % 3]
    if kind == "never-connects":
        pc = RTCPeerConnection()
        pc.addTransceiver("video")
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.post("/api/v1/webrtc/offer",
                                json={"sdp": pc.localDescription.sdp, "type": "offer"})
            assert r.status_code == 200
        await pc.close()  # the answer is never applied: the server must reap it
        return kind
    client = LiveV2VClient(url)
    try:
        await client.connect(NumberedFrames(size=64, fps=30))
        await client.recv(timeout_s=CONNECT_TIMEOUT_S + 30)
        if kind == "polite":
            assert await client.stop() == 204
    finally:
        await client.close()
    return kind


async def churn(url: str) -> dict[str, int]:
    counts = {"polite": 0, "abrupt": 0, "never-connects": 0}
    semaphore = asyncio.Semaphore(AT_ONCE)

    async def run(i: int) -> None:
        async with semaphore:
            counts[await one_session(url, i)] += 1

    await asyncio.gather(*(run(i) for i in range(SESSIONS)))
    return counts


async def server_tasks(loop: asyncio.AbstractEventLoop) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(count(), loop))


async def test_churn_leaks_nothing() -> None:
    with serve_in_thread(pipeline="passthrough", connect_timeout_s=CONNECT_TIMEOUT_S,
                         max_sessions=SESSIONS) as server:
        sessions = server.app.state.sessions
        service = server.app.state.service
        await churn(server.url)  # warm-up round fills pools and caches
        await wait_empty(sessions, service)
        loop = await server_loop(server.url, sessions)
        base = (own_threads(), open_fds(), await server_tasks(loop))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        counts = await churn(server.url)
        elapsed = time.monotonic() - started
        await wait_empty(sessions, service)
        after = await settled(base, loop)
        pool = pool_threads()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nchurn: {SESSIONS} sessions {counts} in {elapsed:.1f} s; {pool} pool threads; "
          f"threads/fds/tasks "
          f"{base} -> {after}; max RSS {rss_before // 1024} -> {rss_after // 1024} MiB")
    assert sum(counts.values()) == SESSIONS
    assert after[0] <= base[0] + 2, "threads leaked"
    assert pool <= min(32, (os.cpu_count() or 1) + 4), f"{pool} encoder threads: unbounded"
    assert after[1] <= base[1] + 10, "file descriptors leaked"
    assert after[2] <= base[2] + 2, "tasks leaked"
    assert rss_after - rss_before < 300 * 1024, "memory grew without bound"


async def wait_empty(sessions, service, timeout_s: float = CONNECT_TIMEOUT_S + 40) -> None:
    deadline = time.monotonic() + timeout_s
    while len(sessions) or service.stream_count:
        assert time.monotonic() < deadline, f"{len(sessions)} sessions left"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # closed transports release their sockets


async def settled(base: tuple[int, int, int], loop: asyncio.AbstractEventLoop,
                  timeout_s: float = 30.0) -> tuple[int, int, int]:
    """(threads, fds, server tasks) once they are back within the test's bounds of `base`, or
    as they are at the deadline: a closed session's decoder/encoder threads and sockets end a
    moment after the session is gone (seen: 3 threads still ending on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = (own_threads(), open_fds(), await server_tasks(loop))
        within = (now[0] <= base[0] + 2 and now[1] <= base[1] + 10 and now[2] <= base[2] + 2)
        if within or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.1)


async def server_loop(url: str, sessions) -> asyncio.AbstractEventLoop:
    """The server's event loop, taken from a live session."""
    async with LiveV2VClient(url) as client:
        await client.connect(NumberedFrames(size=64, fps=30))
        loop = sessions.get(client.session_id)._loop
        await client.stop()
    await asyncio.sleep(0.5)
    return loop


CLIENT = """
import asyncio, sys
from signaling.client import LiveV2VClient, NumberedFrames

async def main():
    client = LiveV2VClient(sys.argv[1])
    await client.connect(NumberedFrames(size=64, fps=20))
    await client.recv()
    print("streaming", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_killed_client_is_detected_and_freed() -> None:
    """No DELETE, no DTLS goodbye: only ICE consent freshness (RFC 7675) can tell."""
    with serve_in_thread(pipeline="passthrough") as server:
        sessions = server.app.state.sessions
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, server.url, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
            assert line.strip() == b"streaming"
            assert len(sessions) == 1
        finally:
            proc.kill()  # SIGKILL: the process cannot say goodbye
            await proc.wait()
        killed = time.monotonic()
        await wait_empty(sessions, server.app.state.service, timeout_s=90)
    print(f"\nkilled client freed after {time.monotonic() - killed:.0f} s")


WHIP_INGESTS = int(os.environ.get("WHIP_CHURN_INGESTS", "24"))


async def one_ingest(url: str, i: int) -> str:
    """A WHIP ingest with 0–3 WHEP viewers, ended one of three ways."""
    kind = ("polite", "abrupt", "producer-first")[i % 3]
    viewers = [WhipWhepClient(url) for _ in range(i % 4)]
    whip = WhipWhepClient(url)
    try:
        await whip.publish(NumberedFrames(size=64, fps=30))
        for viewer in viewers:
            await viewer.play(whip.session_id)
        for viewer in viewers:
            await viewer.recv(timeout_s=CONNECT_TIMEOUT_S + 30)
        if kind == "polite":
            for viewer in viewers:
                assert await viewer.stop() == 200
            assert await whip.stop() == 200
        elif kind == "producer-first":
            assert await whip.stop() == 200  # the server closes the viewers
            for viewer in viewers:
                with contextlib.suppress(MediaStreamError, TimeoutError):
                    for _ in range(100):
                        await asyncio.wait_for(viewer.remote.recv(), 10)
        # abrupt: every peer just closes (DTLS goodbye, no DELETE)
    finally:
        for client in (*viewers, whip):
            await client.close()
    return kind


async def test_whip_whep_churn_leaks_nothing() -> None:
    with serve_in_thread(pipeline="passthrough", connect_timeout_s=CONNECT_TIMEOUT_S,
                         max_sessions=WHIP_INGESTS) as server:
        sessions = server.app.state.sessions
        service = server.app.state.service

        async def churn_ingests() -> dict[str, int]:
            counts = {"polite": 0, "abrupt": 0, "producer-first": 0}
            semaphore = asyncio.Semaphore(4)

            async def run(i: int) -> None:
                async with semaphore:
                    counts[await one_ingest(server.url, i)] += 1

            await asyncio.gather(*(run(i) for i in range(WHIP_INGESTS)))
            return counts

        async def all_gone() -> None:
            await wait_empty(sessions, service)
            deadline = time.monotonic() + 30
            while sessions.viewers():
                assert time.monotonic() < deadline, f"{len(sessions.viewers())} viewers left"
                await asyncio.sleep(0.1)

        await churn_ingests()  # warm-up round fills pools and caches
        await all_gone()
        loop = await server_loop(server.url, sessions)
        base = (own_threads(), open_fds(), await server_tasks(loop))
        counts = await churn_ingests()
        await all_gone()
        after = await settled(base, loop)
    print(f"\nWHIP/WHEP churn: {WHIP_INGESTS} ingests {counts}; threads/fds/tasks "
          f"{base} -> {after}")
    assert sum(counts.values()) == WHIP_INGESTS
    assert after[0] <= base[0] + 2, "threads leaked"
    assert after[1] <= base[1] + 10, "file descriptors leaked"
    assert after[2] <= base[2] + 2, "tasks leaked"
