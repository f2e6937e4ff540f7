"""Channel data received in fewer steps: one AES-GCM call per SSH packet, straight to the channel.

asyncssh appends every read to its input buffer, slices each packet out of it,
joins header, body and tag again before decrypting (with a fresh AES key
schedule), slices the payload out of the plaintext and the data out of the
payload: about six copies per byte. For a connection whose incoming cipher is
AES-GCM, `FastReceiver` decrypts each MSG_CHANNEL_DATA packet from a view of
the read itself and hands the channel its data, copying once.

Invariants:
- Only complete MSG_CHANNEL_DATA packets for an open channel, within its window,
  well formed, are taken here, and only while asyncssh stands at a packet
  boundary with nothing buffered. Any other packet (and everything after it in
  that read) goes to asyncssh's own `data_received` unchanged, with the cipher
  untouched: a packet is only committed (nonce advanced, sequence number
  counted) once it is known to be one this path carries. So key exchanges,
  window adjusts, EOF, close, requests and a bad tag (which asyncssh turns into
  its MAC error) are all asyncssh's.
- When asyncssh holds part of a packet, it is given exactly the bytes that
  complete it, then this path carries on at the next boundary; a packet split
  between two reads while this path runs is kept here (`tail`) and completed.
- It keeps asyncssh's state in step: the nonce (the cipher's `_update_iv`), the
  receive sequence number, the channel's window (through `_accept_data`, which
  also sends window adjusts and buffers while the channel is paused), the
  keepalive timer. Errors raised while delivering close the connection as
  asyncssh's own receive loop does (`internal_error`).
- Enabled only for the asyncssh versions checked (relay.ssh.fastsend.TESTED).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.ssh.fastsend import ENABLED, GcmCipher, GcmEncryption

MSG_CHANNEL_DATA = 94
_TAG = 16
_LEN = struct.Struct(">I")
_DATA = struct.Struct(">BBII")  # padding length, message type, recipient channel, data length


class FastReceiver:
    """One SSH connection's `data_received`: GCM channel data here, everything else asyncssh's."""

    __slots__ = ("aead", "cipher", "conn", "keys", "orig", "packets", "tail", "wants_view")

    def __init__(self, conn: Any, orig: Callable[[Any], None]) -> None:
        self.conn = conn
        self.orig = orig  # asyncssh's data_received (possibly fed in slices)
        self.cipher: Any = None
        self.aead: AESGCM | None = None
        self.tail = bytearray()  # a packet split between reads, while this path runs
        self.packets = 0  # taken by the fast path (for tests and the bench)
        self.keys = 0  # incoming keys it has used (a rekey makes a new one)
        self.wants_view: Callable[[Any], bool] = _never  # sessions that accept a memoryview

    def __call__(self, data: bytes, datatype: object = None) -> None:
        conn = self.conn
        if conn._transport is None:
            return
        conn._reset_keepalive_timer()  # as asyncssh's own receive loop does
        try:
            self._received(data)
        except Exception:  # as asyncssh's own receive loop: the connection closes
            conn.internal_error()

    def _received(self, data: bytes) -> None:
        view = memoryview(data)
        total, off = len(view), 0
        if self.tail:
            off = self._complete_tail(view)
        while 0 <= off < total:
            if not self._at_boundary():
                off = self._top_up(view, off)
                continue
            aead = self._keyed()
            if aead is None:  # not (or no longer) AES-GCM: asyncssh reads the rest
                self.orig(view[off:])
                return
            if total - off < 4:
                self.tail += view[off:]
                return
            size = 4 + _LEN.unpack_from(view, off)[0] + _TAG
            if size > 4 + self.conn._max_recv_pktlen + _TAG:
                self.orig(view[off:])  # asyncssh says why
                return
            if total - off < size:
                self.tail += view[off:]
                return
            if not self._take(aead, view[off : off + size]):
                self.orig(view[off : off + size])  # asyncssh's packet, the nonce untouched
            off += size

    def _complete_tail(self, view: memoryview) -> int:
        """Complete the packet held in `tail`; where `view` goes on, or -1 when all is used."""
        tail = self.tail
        used = 0
        if len(tail) < 4:
            used = min(4 - len(tail), len(view))
            tail += view[:used]
            if len(tail) < 4:
                return -1
        size = 4 + int(_LEN.unpack_from(tail, 0)[0]) + _TAG
        if size > 4 + self.conn._max_recv_pktlen + _TAG:
            self.tail = bytearray()
            self.orig(bytes(tail) + bytes(view[used:]))  # asyncssh says why
            return -1
        k = min(size - len(tail), len(view) - used)
        tail += view[used : used + k]
        used += k
        if len(tail) < size:
            return -1
        packet = bytes(tail)
        self.tail = bytearray()
        aead = self._keyed()
        if aead is None or not self._take(aead, memoryview(packet)):
            self.orig(packet)
        return used

    def _at_boundary(self) -> bool:
        conn = self.conn
        return not conn._inpbuf and conn._recv_handler == conn._recv_pkthdr

    def _top_up(self, view: memoryview, off: int) -> int:
        """Give asyncssh what completes the packet it holds; where `view` goes on, or -1."""
        conn = self.conn
        if conn._recv_handler == conn._recv_pkthdr:
            need = int(conn._recv_blocksize) - len(conn._inpbuf)
        elif conn._recv_handler == conn._recv_packet:
            rem = 4 + int(conn._pktlen) + int(conn._recv_macsize) - int(conn._recv_blocksize)
            need = rem - len(conn._inpbuf)
        else:  # version exchange, or a packet still being handled: all of it is asyncssh's
            need = len(view) - off
        if need <= 0 or off + need >= len(view):
            self.orig(view[off:])
            return -1
        self.orig(view[off : off + need])
        return off + need

    def _keyed(self) -> AESGCM | None:
        conn = self.conn
        enc = conn._recv_encryption
        if type(enc) is not GcmEncryption or conn._decompressor is not None:
            return None
        if not conn._auth_complete:
            return None
        cipher = enc._cipher
        if cipher is not self.cipher or self.aead is None:
            if type(cipher) is not GcmCipher:
                return None
            self.cipher, self.aead = cipher, AESGCM(cipher._key)
            self.keys += 1
        return self.aead

    def _take(self, aead: AESGCM, packet: memoryview) -> bool:
        """Carry one complete packet if it is channel data this path takes; else touch nothing."""
        conn = self.conn
        try:
            plain = aead.decrypt(self.cipher._iv, packet[4:], packet[:4])
        except InvalidTag:
            return False  # asyncssh decrypts it again and reports the MAC error
        if len(plain) < 10:
            return False
        padlen, pkttype, recipient, n = _DATA.unpack_from(plain, 0)
        if pkttype != MSG_CHANNEL_DATA or 10 + n + padlen != len(plain):
            return False
        chan = conn._channels.get(recipient)
        if chan is None or chan._recv_state != "open" or n > chan._recv_window:
            return False
        self.cipher._update_iv()
        conn._recv_seq = (conn._recv_seq + 1) & 0xFFFFFFFF
        conn._auth_final = True
        self.packets += 1
        body = memoryview(plain)[10 : 10 + n]
        chan._accept_data(body if self.wants_view(chan) else bytes(body))
        return True


def _never(chan: Any) -> bool:
    return False


def install(conn: Any, wants_view: Callable[[Any], bool]) -> FastReceiver | None:
    """Put a `FastReceiver` in front of `conn.data_received` (once); None where it is off."""
    if not ENABLED:
        return None
    current = conn.__dict__.get("data_received")
    if isinstance(current, FastReceiver):
        return current
    receiver = FastReceiver(conn, conn.data_received)
    receiver.wants_view = wants_view
    conn.data_received = receiver
    return receiver
