"""Which side of DTLS the server takes.

aiortc as the DTLS *client* offers only ECDSA cipher suites, so it cannot complete a handshake
with a server whose certificate is RSA, which is what GStreamer's webrtcbin (1.22, Debian 12)
uses: "no shared cipher". As the DTLS *server* (its certificate is ECDSA) it works with every
client. Browsers take either role, so for the WHIP/WHEP clients the answer says
`a=setup:passive` whenever the offer leaves the choice to us (`actpass`).
"""

from __future__ import annotations

from aiortc import RTCPeerConnection


def answer_as_dtls_server(pc: RTCPeerConnection) -> None:
    """Call after setRemoteDescription(offer), before createAnswer()."""
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for transport in transports:
        if transport._role == "auto":  # the offer said actpass
            transport._set_role("server")
