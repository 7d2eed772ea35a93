"""The marker-bit jitter buffer releases a video frame as soon as its last packet is in."""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from signaling.jitter import MarkerJitterBuffer


def packet(seq: int, ts: int, data: bytes, marker: bool = False) -> RtpPacket:
    p = RtpPacket(sequence_number=seq, timestamp=ts, marker=int(marker))
    p._data = data  # type: ignore[attr-defined] - aiortc's depayloaded payload
    return p


def test_frame_is_released_on_its_marker_packet() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    assert jb.add(packet(10, 3000, b"a"))[1] is None
    assert jb.add(packet(11, 3000, b"b"))[1] is None
    frame = jb.add(packet(12, 3000, b"c", marker=True))[1]
    assert frame is not None and (frame.data, frame.timestamp) == (b"abc", 3000)
    frame = jb.add(packet(13, 6000, b"d", marker=True))[1]
    assert frame is not None and frame.data == b"d"


def test_without_a_marker_the_next_timestamp_completes_the_frame() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    jb.add(packet(1, 100, b"x"))
    jb.add(packet(2, 100, b"y"))
    frame = jb.add(packet(3, 200, b"z"))[1]
    assert frame is not None and frame.data == b"xy"


def test_a_gap_holds_the_frame_until_the_missing_packet_arrives() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    jb.add(packet(1, 100, b"a"))
    assert jb.add(packet(3, 100, b"c", marker=True))[1] is None
    frame = jb.add(packet(2, 100, b"b"))[1]
    assert frame is not None and frame.data == b"abc"


def test_padding_after_a_released_frame_never_becomes_an_empty_frame() -> None:
    jb = MarkerJitterBuffer(capacity=128, is_video=True)
    assert jb.add(packet(1, 100, b"a", marker=True))[1] is not None
    assert jb.add(packet(2, 100, b""))[1] is None  # padding, same timestamp, no payload
    assert jb.add(packet(3, 100, b""))[1] is None
    frame = jb.add(packet(4, 200, b"b", marker=True))[1]
    assert frame is not None and frame.data == b"b"
