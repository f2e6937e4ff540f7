"""Datagram frames on an SSH channel: `[u16 length][u32 flow id][payload]`.

SSH carries byte streams only, so UDP datagrams travel on a channel in frames.
The length is the payload's length (big-endian, like every SSH integer); a flow
id names one UDP flow (one peer address of a tunnel) on that channel.

Invariants (checked by the property tests):
- `encode` and `FrameDecoder.feed` are inverse: any sequence of frames, cut into
  chunks anywhere, decodes to the same frames in the same order.
- Decoding never raises on what a peer sent: bad input is a returned outcome.
  A frame longer than `max_payload` is `Oversized`: its payload is skipped
  without being buffered, and the frames after it decode normally. A frame for
  flow 0 (reserved, never assigned) is `Malformed` and skipped. Bytes left over
  when the channel ends are `Malformed` ("truncated").
- A decoder buffers at most one header plus `max_payload` bytes of a frame.
- Empty payloads are legal: UDP allows empty datagrams.
- `FramedProtocol` is the half of a framed channel both ends share (the relay's
  UDP sessions and the remote agent's): it decodes and says what each frame
  means, and knows nothing of the transport beyond the object it was handed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from quota.core.errors import InvalidValue

HEADER = struct.Struct("!HI")
HEADER_SIZE = HEADER.size  # 6
MAX_PAYLOAD = 0xFFFF  # what a u16 length can say
MAX_FLOW_ID = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One datagram for one flow."""

    flow_id: int
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Oversized:
    """A frame longer than the decoder's maximum; its payload was skipped."""

    flow_id: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Malformed:
    """Input that is not a frame: `reason` is "flow_zero" or "truncated"."""

    reason: str


Decoded = Frame | Oversized | Malformed


def encode(flow_id: int, payload: bytes) -> bytes:
    """The frame carrying `payload` for `flow_id` (our own output: bad values raise)."""
    if not 0 < flow_id <= MAX_FLOW_ID:
        raise InvalidValue(f"flow id out of range: {flow_id}")
    if len(payload) > MAX_PAYLOAD:
        raise InvalidValue(f"payload of {len(payload)} bytes does not fit a frame")
    return HEADER.pack(len(payload), flow_id) + payload


class FrameDecoder:
    """Incremental decoder for one direction of one channel."""

    __slots__ = ("_buf", "_skip", "max_payload")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise InvalidValue(f"max_payload must be 0..{MAX_PAYLOAD}, got {max_payload}")
        self.max_payload = max_payload
        self._buf = bytearray()
        self._skip = 0  # payload bytes of an oversized frame still to discard

    def feed(self, data: bytes) -> list[Decoded]:
        """Decode what `data` completes; keep the unfinished tail for the next call."""
        out: list[Decoded] = []
        pos = 0
        if self._skip:
            k = min(self._skip, len(data))
            self._skip -= k
            pos = k
        buf = self._buf
        buf += data[pos:] if pos else data
        pos = 0
        size = len(buf)
        while size - pos >= HEADER_SIZE:
            length, flow_id = HEADER.unpack_from(buf, pos)
            start = pos + HEADER_SIZE
            if length > self.max_payload:
                out.append(Oversized(flow_id=flow_id, length=length))
                pos = min(start + length, size)
                self._skip = start + length - pos
                continue
            end = start + length
            if end > size:
                break
            if flow_id == 0:
                out.append(Malformed(reason="flow_zero"))
            else:
                out.append(Frame(flow_id=flow_id, payload=bytes(buf[start:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def close(self) -> Malformed | None:
        """The channel ended: anything left over is a truncated frame."""
        leftover = bool(self._buf) or bool(self._skip)
        self._buf.clear()
        self._skip = 0
        return Malformed(reason="truncated") if leftover else None

    @property
    def buffered(self) -> int:
        return len(self._buf)


class FramedProtocol:
    """The callbacks of a channel carrying frames, on either side of a UDP tunnel.

    Put it first among the bases of a channel session class, so these callbacks
    win: `data_received` decodes at once and calls `on_frame`, `on_oversized` or
    `on_malformed`; `pause_writing`/`resume_writing` keep a congestion flag
    that senders read to drop datagrams rather than buffer them.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.decoder = FrameDecoder(max_payload)
        self.chan: Any = None
        self.congested = False

    def connection_made(self, chan: Any) -> None:
        self.chan = chan

    def pause_writing(self) -> None:
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False

    def data_received(self, data: bytes, datatype: Any) -> None:
        for event in self.decoder.feed(data):
            if isinstance(event, Frame):
                self.on_frame(event.flow_id, event.payload)
            elif isinstance(event, Oversized):
                self.on_oversized(event.flow_id, event.length)
            else:
                self.on_malformed(event.reason)

    def on_frame(self, flow_id: int, payload: bytes) -> None:
        raise NotImplementedError

    def on_oversized(self, flow_id: int, length: int) -> None:
        """An oversized frame was skipped; by default nothing more is done."""

    def on_malformed(self, reason: str) -> None:
        """A malformed frame was skipped; by default nothing more is done."""
