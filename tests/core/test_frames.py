"""Datagram frames: round trip, any chunking, bad input as outcomes (properties)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota.core.errors import InvalidValue
from quota.core.frames import (
    HEADER,
    MAX_FLOW_ID,
    Decoded,
    Frame,
    FrameDecoder,
    Malformed,
    Oversized,
    encode,
)

frames_st = st.lists(st.tuples(st.integers(1, MAX_FLOW_ID), st.binary(max_size=300)), max_size=30)


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Decoded]:
    out: list[Decoded] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        out.extend(decoder.feed(data[a:b]))
    return out


@given(frames_st, st.lists(st.integers(0, 10_000), max_size=40))
def test_round_trip_across_any_chunk_split(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Frames cut into chunks anywhere decode to the same frames, in order."""
    wire = b"".join(encode(f, p) for f, p in frames)
    decoder = FrameDecoder()
    got = feed_in_chunks(decoder, wire, cuts)
    assert got == [Frame(flow_id=f, payload=p) for f, p in frames]
    assert decoder.close() is None


@given(frames_st, st.integers(0, 200), st.lists(st.integers(0, 10_000), max_size=40))
def test_oversized_frames_are_skipped_and_the_rest_decodes(
    frames: list[tuple[int, bytes]], limit: int, cuts: list[int]
) -> None:
    """A frame above the maximum is reported (not buffered) and the next ones still decode."""
    wire = b"".join(encode(f, p) for f, p in frames)
    decoder = FrameDecoder(max_payload=limit)
    got = feed_in_chunks(decoder, wire, cuts)
    want: list[Decoded] = [
        Frame(flow_id=f, payload=p) if len(p) <= limit else Oversized(flow_id=f, length=len(p))
        for f, p in frames
    ]
    assert got == want
    assert decoder.buffered <= limit + HEADER.size
    assert decoder.close() is None


@given(st.binary(max_size=2000), st.lists(st.integers(0, 3000), max_size=20))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    """Whatever a peer sends, decoding returns outcomes and never raises."""
    decoder = FrameDecoder(max_payload=500)
    for event in feed_in_chunks(decoder, data, cuts):
        assert isinstance(event, Frame | Oversized | Malformed)
        if isinstance(event, Frame):
            assert event.flow_id != 0 and len(event.payload) <= 500
    closed = decoder.close()
    assert closed is None or closed.reason == "truncated"


def test_flow_zero_is_malformed_and_skipped() -> None:
    """Flow 0 is reserved: its frame is refused and the next frame decodes."""
    wire = HEADER.pack(3, 0) + b"abc" + encode(7, b"ok")
    assert FrameDecoder().feed(wire) == [
        Malformed(reason="flow_zero"),
        Frame(flow_id=7, payload=b"ok"),
    ]


def test_leftover_bytes_at_close_are_truncated() -> None:
    """A frame cut off by the end of the channel is reported once, as truncated."""
    decoder = FrameDecoder()
    assert decoder.feed(encode(1, b"hello")[:-1]) == []
    assert decoder.close() == Malformed(reason="truncated")
    assert decoder.close() is None


def test_encode_refuses_what_no_frame_can_say() -> None:
    """Our own output is checked: flow 0 or a payload above 65535 bytes raise."""
    with pytest.raises(InvalidValue):
        encode(0, b"x")
    with pytest.raises(InvalidValue):
        encode(1, bytes(65536))
    assert encode(1, b"") == HEADER.pack(0, 1)
