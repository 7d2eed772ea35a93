"""What WHIP (RFC 9725) and WHEP add on top of an offer: SDP bodies, trickle-ice-sdpfrag PATCHes,
ETags, ICE servers as `Link` headers, and initial parameters as query parameters."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aiortc import RTCPeerConnection
from fastapi import APIRouter, HTTPException, Request, Response

from pipeline import ParameterUpdate

from .ice import IceServer, IceServerProvider
from .messages import MessageError, parse_update
from .models import MAX_CANDIDATES, MAX_SDP_BYTES, IceCandidateModel
from .sdp import SdpError

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
EXPOSED_HEADERS = ["Location", "ETag", "Link", "Retry-After", "Accept-Patch"]
"""Headers a browser WHIP/WHEP client (another origin) must be able to read."""
QUERY_KEYS = ("prompt", *sorted(ParameterUpdate.model_fields))


async def read_body(request: Request, content_type: str, limit: int = MAX_SDP_BYTES) -> str:
    """The request's text body of `content_type`. 415 for another type, 413 when too large,
    400 when it is not UTF-8."""
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != content_type:
        raise HTTPException(415, f"Content-Type must be {content_type}, got {given or 'none'!r}.",
                            headers={"Accept-Post" if content_type == SDP else "Accept-Patch":
                                     content_type})
    raw = await request.body()
    if len(raw) > limit:
        raise HTTPException(413, f"Body too large ({len(raw)} bytes; the limit is {limit}).")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "The body is not UTF-8 text.") from None


def query_parameters(items: Iterable[tuple[str, str]]) -> ParameterUpdate | None:
    """`?prompt=…&noise_scale=…` as a `parameters` message, validated as the data channel's
    (values are read as JSON where they parse, else as text). Raises MessageError."""
    data: dict[str, object] = {}
    for key, text in items:
        if key not in QUERY_KEYS:
            raise MessageError(f"unknown query parameter {key!r}; known: {', '.join(QUERY_KEYS)}")
        if key in data or (key == "prompt" and "prompts" in data) or (
                key == "prompts" and "prompt" in data):
            raise MessageError(f"query parameter {key!r} given twice")
        if key == "prompt":
            data["prompts"] = [{"text": text, "weight": 1.0}]
            continue
        try:
            data[key] = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            if isinstance(exc, MessageError):
                raise
            data[key] = text
    if not data:
        return None
    return parse_update(json.dumps(data))


def _reject_constant(name: str) -> float:
    raise MessageError(f"{name} is not a valid number")


def link_headers(servers: list[IceServer]) -> list[str]:
    """The ICE servers as RFC 9725 §4.6 `Link` header values."""
    links = []
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else server.urls
        for url in urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None and server.credential is not None:
                link += (f'; username="{_quoted(server.username)}"; '
                         f'credential="{_quoted(server.credential)}"; credential-type="password"')
            links.append(link)
    return links


async def with_ice_links(response: Response, ice: IceServerProvider) -> Response:
    """`response` with the ICE servers as `Link` headers (answers and OPTIONS of WHIP/WHEP)."""
    for link in link_headers(await ice.servers()):
        response.headers.append("Link", link)
    return response


async def options_response(ice: IceServerProvider) -> Response:
    """The answer to a WHIP/WHEP endpoint's OPTIONS: what it takes, and the ICE servers."""
    return await with_ice_links(Response(status_code=204, headers={
        "Accept-Post": SDP, "Allow": "OPTIONS, POST"}), ice)


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def etag_of(sdp: str) -> str:
    """The ICE session's entity tag: the answer's ICE username fragment (it would change with an
    ICE restart, the one thing RFC 9725 ties the ETag to)."""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return f'"{line[len("a=ice-ufrag:"):].strip()}"'
    return '"0"'


def remote_ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line[len("a=ice-ufrag:"):].strip()
    return None


@dataclass
class SdpFragment:
    """A parsed `application/trickle-ice-sdpfrag` body."""

    ufrag: str | None = None
    pwd: str | None = None
    candidates: list[IceCandidateModel] = field(default_factory=list)
    end_of_candidates: bool = False


def parse_sdpfrag(text: str) -> SdpFragment:
    """Parse a trickle-ice-sdpfrag (RFC 8840). Raises ValueError with a readable reason; the
    candidate lines themselves are checked when they are applied."""
    frag = SdpFragment()
    mid: str | None = None
    index = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise ValueError(f"not an SDP line: {line[:80]!r}")
        if line.startswith("m="):
            index += 1
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:"):][:64]
        elif line.startswith("a=ice-ufrag:"):
            frag.ufrag = line[len("a=ice-ufrag:"):]
        elif line.startswith("a=ice-pwd:"):
            frag.pwd = line[len("a=ice-pwd:"):]
        elif line.startswith("a=candidate:"):
            if len(frag.candidates) >= MAX_CANDIDATES:
                raise ValueError(f"more than {MAX_CANDIDATES} candidates in one fragment")
            frag.candidates.append(IceCandidateModel(
                candidate=line[2:][:1024], sdpMid=mid,
                sdpMLineIndex=max(index, 0) if mid is None else None))
        elif line == "a=end-of-candidates":
            frag.end_of_candidates = True
    return frag



class Peer(Protocol):
    """What a PATCH reaches: a session or a viewer."""

    pc: RTCPeerConnection

    async def add_candidates(self, candidates: list[IceCandidateModel]) -> None: ...


async def apply_fragment(peer: Peer, request: Request) -> Response:
    """RFC 9725 §4.3: a trickle PATCH → 204; an ICE restart → 422 (aiortc cannot restart ICE:
    the client starts a new session instead); a stale If-Match → 412."""
    text = await read_body(request, SDPFRAG)
    local, remote = peer.pc.localDescription, peer.pc.remoteDescription
    etag = etag_of(local.sdp) if local is not None else '"0"'
    if_match = request.headers.get("if-match")
    if if_match == "*":
        raise HTTPException(422, "ICE restarts are not supported; DELETE this session and "
                                 "POST a new offer.")
    if if_match is not None and if_match.strip() != etag:
        raise HTTPException(412, f"If-Match {if_match!r} does not match this session's ETag.",
                            headers={"ETag": etag})
    try:
        frag = parse_sdpfrag(text)
    except ValueError as exc:
        raise HTTPException(400, f"Bad trickle-ice-sdpfrag: {exc}") from None
    current = remote_ufrag(remote.sdp) if remote is not None else None
    if frag.ufrag is not None and current is not None and frag.ufrag != current:
        raise HTTPException(422, "ICE restarts are not supported; DELETE this session and "
                                 "POST a new offer.")
    try:
        await peer.add_candidates(frag.candidates)
    except SdpError as exc:
        raise HTTPException(400, str(exc)) from None
    return Response(status_code=204)


def answer_other_methods(api: APIRouter, path: str, allow: str) -> None:
    """405 with `Allow` for the methods a WHIP/WHEP URL does not take (without this the UI's
    catch-all mount at "/" would answer them with its 404)."""
    others = {"GET", "PUT", "PATCH", "DELETE", "POST"} - {m.strip() for m in allow.split(",")}

    async def not_allowed() -> Response:
        raise HTTPException(405, f"This URL takes {allow}.", headers={"Allow": allow})

    api.add_api_route(path, not_allowed, methods=sorted(others), include_in_schema=False)
