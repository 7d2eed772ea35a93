"""Release received video frames on the RTP marker bit.

aiortc's jitter buffer hands a frame to the decoder only when the first packet of the *next*
frame arrives, which adds one frame interval of latency per aiortc receiver (50 ms at 20 fps,
67 ms at 15 fps). The marker bit on a frame's last packet says the frame is complete, so it can
go at once. Without a marker (a lost last packet), a new timestamp still completes the frame,
as before.

Packets without payload (the padding a browser sends when no RTX stream was negotiated) can
follow a released frame with its timestamp; they would make an empty frame, which libavcodec
takes for the end of the stream — every later frame then fails to decode. They are skipped.
"""

from __future__ import annotations

import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket


class MarkerJitterBuffer(JitterBuffer):
    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if not self._is_video or self._prefetch or self._origin is None:
            return super()._remove_frame(sequence_number)
        while True:
            frame = self._next_frame()
            if frame is None or frame.data:
                return frame

    def _next_frame(self) -> JitterFrame | None:
        assert self._origin is not None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None  # a gap: wait for the missing packet
            if packets and packet.timestamp != packets[0].timestamp:
                return self._take(packets, count)  # the old rule: the next frame began
            packets.append(packet)
            if packet.marker:
                return self._take(packets, count + 1)
        return None

    def _take(self, packets: list[RtpPacket], count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets),  # type: ignore[attr-defined]
                            timestamp=packets[0].timestamp)
        self.remove(count)
        return frame


def release_frames_on_marker() -> None:
    """Make every RTCRtpReceiver created from now on use `MarkerJitterBuffer`."""
    aiortc.rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer  # type: ignore[misc]
