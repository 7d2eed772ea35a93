"""A Python (aiortc) client for the API — what a non-browser program uses, and what the tests
and benchmarks drive the server with. It follows the reference browser client of api.md:
ICE servers first, a `parameters` data channel created before the offer, offer with
`initialParameters`, answer applied, optional trickle PATCH, DELETE to stop.

    async with LiveV2VClient("http://127.0.0.1:8000") as client:
        await client.connect(NumberedFrames(size=512, fps=20),
                             {"prompts": [{"text": "ink", "weight": 1}]})
        frame = await client.recv()            # an av.VideoFrame from the pipeline
        await client.send({"noise_scale": 0.3})
        values = await client.applied()        # the values in force once it is applied

`parameters_applied` acknowledges every accepted change (this client's own included);
`parameters_updated` means, as in Scope, "changed from elsewhere" (an HTTP route).
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from typing import Any

import av
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame
from av.packet import Packet

from .ice import IceServer, to_aiortc
from .jitter import release_frames_on_marker

BITS = 16  # frame numbers are drawn as a 4×4 grid of black/white cells


class LiveV2VClient:
    """With `low_latency` (the default) this process's aiortc receivers release each frame on
    its RTP marker bit (`signaling.jitter`), saving one frame interval, as browsers do."""

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout_s: float = 15.0, low_latency: bool = True) -> None:
        if low_latency:
            release_frames_on_marker()
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self.pc: RTCPeerConnection | None = None
        self.session_id: str | None = None
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.remote: MediaStreamTrack | None = None
        self._track_ready = asyncio.Event()
        self._channel_open = asyncio.Event()

    async def __aenter__(self) -> LiveV2VClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, track: MediaStreamTrack | None = None,
                      initial: dict[str, Any] | None = None, *, direction: str = "sendrecv",
                      trickle: bool = False) -> dict[str, Any]:
        """Offer/answer. With no `track`, a transceiver in `direction` (text mode). With
        `trickle`, the offer's candidates are also PATCHed after the answer (as browsers do)."""
        servers = (await self._get("/api/v1/webrtc/ice-servers"))["iceServers"]
        ice = to_aiortc([IceServer.model_validate(s) for s in servers])
        self.pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        channel = pc.createDataChannel("parameters", ordered=True)
        channel.on("open", self._channel_open.set)
        channel.on("message", lambda raw: self.messages.put_nowait(json.loads(raw)))
        self.channel = channel
        if track is not None:
            pc.addTrack(track)
        else:
            pc.addTransceiver("video", direction=direction)

        @pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "video":
                self.remote = remote
                self._track_ready.set()

        await pc.setLocalDescription(await pc.createOffer())
        body: dict[str, Any] = {"sdp": pc.localDescription.sdp, "type": "offer"}
        if initial is not None:
            body["initialParameters"] = initial
        response = await self.http.post("/api/v1/webrtc/offer", json=body)
        if response.status_code != 200:
            raise ApiError(response.status_code, response.json().get("detail"))
        answer = response.json()
        self.session_id = answer["sessionId"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        if trickle:
            await self.patch_candidates(local_candidates(pc.localDescription.sdp))
        return answer

    async def patch_candidates(self, candidates: list[dict[str, Any]]) -> httpx.Response:
        return await self.http.patch(f"/api/v1/webrtc/offer/{self.session_id}",
                                     json={"candidates": candidates})

    async def wait_open(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._channel_open.wait(), timeout_s)

    async def send(self, parameters: dict[str, Any]) -> None:
        await self.wait_open()
        self.channel.send(json.dumps(parameters))

    async def applied(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The values in force after the next accepted change (`parameters_applied`)."""
        return (await self.message("parameters_applied", timeout_s))["parameters"]

    async def message(self, kind: str, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next server message of type `kind` (others are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            msg = await asyncio.wait_for(self.messages.get(), max(remaining, 0.001))
            if msg.get("type") == kind:
                return msg

    async def recv(self, timeout_s: float = 10.0) -> VideoFrame:
        await asyncio.wait_for(self._track_ready.wait(), timeout_s)
        assert self.remote is not None
        return await asyncio.wait_for(self.remote.recv(), timeout_s)

    async def stop(self) -> int:
        """DELETE the session on the server; returns the status code."""
        response = await self.http.delete(f"/api/v1/webrtc/offer/{self.session_id}")
        return response.status_code

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()
        await self.http.aclose()

    async def _get(self, path: str) -> Any:
        response = await self.http.get(path)
        if response.status_code != 200:
            raise ApiError(response.status_code, response.json().get("detail"))
        return response.json()


class WhipWhepClient:
    """A WHIP sender or WHEP viewer (RFC 9725 style: SDP bodies, `Location`, DELETE).

        async with WhipWhepClient("http://127.0.0.1:8000") as whip:
            await whip.publish(NumberedFrames(), {"prompt": "ink"})   # → whip.location
        async with WhipWhepClient("http://127.0.0.1:8000") as whep:
            await whep.play(session_id)                              # None: the latest ingest
            frame = await whep.recv()
    """

    def __init__(self, base_url: str, *, api_key: str | None = None,
                 timeout_s: float = 15.0) -> None:
        release_frames_on_marker()
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=headers)
        self.pc = RTCPeerConnection()
        self.location: str | None = None
        self.remote: MediaStreamTrack | None = None
        self._track_ready = asyncio.Event()

        @self.pc.on("track")
        def on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "video":
                self.remote = remote
                self._track_ready.set()

    async def __aenter__(self) -> WhipWhepClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session_id(self) -> str | None:
        """The WHIP session's id (for a viewer: its own id), the Location's last segment."""
        return self.location.rsplit("/", 1)[-1] if self.location else None

    async def publish(self, track: MediaStreamTrack,
                      query: dict[str, Any] | None = None) -> httpx.Response:
        """Send `track` to `POST /api/v1/whip` (sendonly)."""
        self.pc.addTransceiver(track, direction="sendonly")
        return await self._post("/api/v1/whip", query)

    async def play(self, session_id: str | None = None) -> httpx.Response:
        """Watch a session's output (`POST /api/v1/whep[/{session_id}]`, recvonly)."""
        self.pc.addTransceiver("video", direction="recvonly")
        path = "/api/v1/whep" + (f"/{session_id}" if session_id else "")
        return await self._post(path, None)

    async def _post(self, path: str, query: dict[str, Any] | None) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        response = await self.http.post(path, params=query, content=self.pc.localDescription.sdp,
                                        headers={"Content-Type": "application/sdp"})
        if response.status_code != 201:
            raise ApiError(response.status_code, response.json().get("detail"))
        self.location = response.headers["location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text,
                                                                 type="answer"))
        return response

    async def recv(self, timeout_s: float = 10.0) -> VideoFrame:
        await asyncio.wait_for(self._track_ready.wait(), timeout_s)
        assert self.remote is not None
        return await asyncio.wait_for(self.remote.recv(), timeout_s)

    async def stop(self) -> int:
        """DELETE the resource; returns the status code."""
        return (await self.http.delete(self.location)).status_code

    async def close(self) -> None:
        await self.pc.close()
        await self.http.aclose()


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


def local_candidates(sdp: str) -> list[dict[str, Any]]:
    """The `a=candidate` lines of an SDP, shaped as PATCH candidates."""
    out, mid, index = [], None, -1
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith("a=candidate:"):
            out.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index})
    return out


class NumberedFrames(VideoStreamTrack):
    """A video source whose frames carry their own number (see `read_number`), so that a
    receiver can match every frame it gets back to the moment it was sent."""

    def __init__(self, size: int = 512, fps: float = 20.0,
                 tint: tuple[int, int, int] | None = None) -> None:
        super().__init__()
        self.size, self.fps, self.tint = size, fps, tint
        self.sent: dict[int, float] = {}
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        number = self._count % (1 << BITS)
        image = draw_number(number, self.size, self.tint)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self._count * 90_000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90_000)
        self.sent[number] = time.monotonic()
        self._count += 1
        return frame

    @property
    def count(self) -> int:
        """Frames sent so far."""
        return self._count


class EncodedNumbers(MediaStreamTrack):
    """Like `NumberedFrames`, but the frames are VP8-encoded once, up front, and aiortc only
    packetizes them: a load generator whose sending costs almost no CPU, so that a benchmark
    measures the server rather than its own encoder. Frames repeat every `len(sequence)`
    frames (the sequence starts with a keyframe); keyframe requests are not honoured."""

    kind = "video"

    def __init__(self, sequence: list[bytes], fps: float = 20.0) -> None:
        super().__init__()
        self.sequence, self.fps = sequence, fps
        self.sent: dict[int, float] = {}
        """frame number → time.monotonic() of its latest sending."""
        self.count = 0
        self._start: float | None = None

    @staticmethod
    def encode(size: int = 512, length: int = 200, bitrate: int = 500_000) -> list[bytes]:
        """VP8 frames numbered 0..length-1, realtime settings as aiortc's encoder uses."""
        codec = av.CodecContext.create("libvpx", "w")
        codec.width = codec.height = size
        codec.pix_fmt = "yuv420p"
        codec.bit_rate = bitrate
        codec.gop_size = 3000
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        out: list[bytes] = []
        for number in range(length):
            frame = VideoFrame.from_ndarray(draw_number(number, size), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = number
            out.append(b"".join(bytes(p) for p in codec.encode(frame)))
        assert all(out), "the encoder buffered frames"
        return out

    async def recv(self) -> Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        number = self.count % len(self.sequence)
        packet = Packet(self.sequence[number])
        packet.pts = int(self.count * 90_000 / self.fps)
        packet.time_base = fractions.Fraction(1, 90_000)
        self.sent[number] = time.monotonic()
        self.count += 1
        return packet


def draw_number(number: int, size: int, tint: tuple[int, int, int] | None = None) -> np.ndarray:
    image = np.full((size, size, 3), tint or (64, 64, 64), np.uint8)
    cell = size // 4
    for bit in range(BITS):
        if number >> bit & 1:
            row, col = divmod(bit, 4)
            image[row * cell + cell // 4: (row + 1) * cell - cell // 4,
                  col * cell + cell // 4: (col + 1) * cell - cell // 4] = 255
    return image


def read_frame_number(frame: VideoFrame) -> int:
    """`read_number` straight from a decoded frame's luma plane (no RGB conversion: cheap
    enough for a benchmark client reading every frame of many sessions)."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "nv12", "gray"):
        return read_number(frame.to_ndarray(format="rgb24"))
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    cell = frame.height // 4
    half = max(1, cell // 8)
    number = 0
    for bit in range(BITS):
        row, col = divmod(bit, 4)
        y, x = row * cell + cell // 2, col * cell + cell // 2
        if luma[y - half: y + half, x - half: x + half].mean() > 150:  # 16..235 range
            number |= 1 << bit
    return number


def read_number(image: np.ndarray) -> int:
    """Inverse of `draw_number`, robust to codec blur: samples each cell's centre."""
    h = image.shape[0]
    cell = h // 4
    luma = image.astype(np.float32).mean(axis=2)
    number = 0
    for bit in range(BITS):
        row, col = divmod(bit, 4)
        y, x = row * cell + cell // 2, col * cell + cell // 2
        patch = luma[y - cell // 8: y + cell // 8, x - cell // 8: x + cell // 8]
        if patch.mean() > 160:
            number |= 1 << bit
    return number
