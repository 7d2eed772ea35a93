"""Checks on offers and ICE candidates that aiortc itself does not make.

aiortc's `setRemoteDescription` accepts garbage and SDP without media; a browser's candidate
line is parsed by hand here so that a malformed one is a 400, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc import RTCIceCandidate
from aiortc.sdp import SessionDescription, candidate_from_sdp


class SdpError(ValueError):
    """The offer or candidate cannot be used; the text says why (sent as a 400)."""


@dataclass(frozen=True)
class OfferSummary:
    video_direction: str
    """Direction of the first video m-line as the client sees it (sendrecv, recvonly, …)."""
    candidates: int = 0
    """ICE candidates in the offer (0 for a client that trickles them, or sends none)."""

    @property
    def client_sends_video(self) -> bool:
        return self.video_direction in ("sendrecv", "sendonly")

    @property
    def client_receives_video(self) -> bool:
        return self.video_direction in ("sendrecv", "recvonly")


def check_offer(sdp: str, sdp_type: str) -> OfferSummary:
    if sdp_type != "offer":
        raise SdpError(f'type must be "offer", got {sdp_type!r}')
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("sdp is not a session description (it must start with v=0)")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors on bad input
        raise SdpError(f"sdp could not be parsed: {type(exc).__name__}") from None
    videos = [m for m in parsed.media if m.kind == "video"]
    if not videos:
        raise SdpError("offer has no video m-line; add a video track or transceiver")
    first = videos[0]
    if not (first.ice.usernameFragment and first.ice.password) or not first.dtls:
        raise SdpError("offer lacks ICE credentials or a DTLS fingerprint")
    if not first.rtp.codecs:
        raise SdpError("offer's video m-line lists no codecs")
    return OfferSummary(video_direction=first.direction or "sendrecv",
                        candidates=sum(len(m.ice_candidates) for m in parsed.media))


def parse_candidate(line: str, sdp_mid: str | None, sdp_mline_index: int | None) -> RTCIceCandidate:
    """Parse a browser `candidate:` line. Raises SdpError when malformed."""
    text = line.strip()
    if text.startswith("a="):
        text = text[2:]
    if text.startswith("candidate:"):
        text = text[len("candidate:"):]
    bits = text.split()
    try:
        if len(bits) < 8 or bits[6] != "typ":
            raise ValueError
        if bits[2].lower() not in ("udp", "tcp") or not 0 <= int(bits[5]) <= 65535:
            raise ValueError
        candidate = candidate_from_sdp(text)
    except (ValueError, AssertionError, IndexError):
        raise SdpError(f"malformed ICE candidate: {line[:120]!r}") from None
    candidate.sdpMid = sdp_mid
    # aiortc needs one of the two; a lone candidate belongs to the first (bundled) m-line.
    candidate.sdpMLineIndex = 0 if sdp_mid is None and sdp_mline_index is None else sdp_mline_index
    return candidate
