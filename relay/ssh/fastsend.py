"""Channel data sent in fewer steps: one plaintext build and one AES-GCM call per SSH packet.

asyncssh sends a chunk of channel data through about ten copies per byte
(`bytearray` of the chunk, a slice per packet, `String`, the channel's and the
connection's payload joins, padding, header plus ciphertext, ciphertext plus
tag), one `os.urandom` call, a fresh AES key schedule and an empty MSG_IGNORE
per packet. For a connection whose outgoing cipher is AES-GCM, `FastSender`
builds each packet's plaintext once, encrypts it with one cached `AESGCM`
object, and hands all packets of a chunk to the transport in one `writelines`.

Invariants:
- The packets are the ones asyncssh would send for the same data (RFC 4253 and
  RFC 5647 framing, same sequence of GCM nonces), minus its MSG_IGNOREs. It
  keeps asyncssh's own state in step: the nonce (through the cipher's
  `_update_iv`), the packet sequence number, the rekey byte count and the
  channel's send window, so asyncssh's own later packets follow on correctly.
- The fast path is taken only when every condition holds: the asyncssh version
  is one whose internals were checked (`TESTED`), its cipher object is
  asyncssh's GCM shim, no compression, keys exchanged and the user
  authenticated, no rekey due, the channel open with nothing in its own send
  buffer. Otherwise, and for whatever the peer's window does not take now, the
  data goes through `chan.write` as before.
- Padding bytes are random, drawn from a pool refilled from `os.urandom`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from typing import Any

import asyncssh
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

try:  # asyncssh's GCM shim: its name and module are internals, checked at import
    from asyncssh.crypto.cipher import GCMCipher
    from asyncssh.encryption import GCMEncryption
except ImportError:  # pragma: no cover - another asyncssh layout: never take the fast path
    GCMCipher = GCMEncryption = None  # type: ignore[assignment,misc]

TESTED = ("2.24.1",)  # asyncssh versions whose internals this module reads
MSG_CHANNEL_DATA = 94
_HEAD = struct.Struct(">BBII")  # padding length, message type, recipient channel, data length
_LEN = struct.Struct(">I")
_POOL = 4096  # random padding bytes drawn per os.urandom call

ENABLED = asyncssh.__version__ in TESTED and GCMEncryption is not None
GcmCipher, GcmEncryption = GCMCipher, GCMEncryption  # for relay.ssh.fastrecv


class FastSender:
    """Sends one SSH connection's channel data packets while its cipher is AES-GCM."""

    __slots__ = ("aead", "cipher", "conn", "keys", "packets", "pad", "pad_at")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cipher: Any = None  # the asyncssh cipher `aead` was made for (a rekey makes a new one)
        self.aead: AESGCM | None = None
        self.pad = b""
        self.pad_at = 0
        self.packets = 0  # sent by the fast path (for tests and the bench)
        self.keys = 0  # outgoing keys it has used (a rekey makes a new one)

    def _aead(self) -> tuple[Any, AESGCM] | None:
        """The connection's outgoing GCM cipher and its AESGCM object, or None (slow path)."""
        conn = self.conn
        enc = conn._send_encryption
        if type(enc) is not GCMEncryption or conn._compressor is not None:
            return None
        if not (conn._kex_complete and conn._auth_complete) or conn._deferred_packets:
            return None
        cipher = enc._cipher
        if cipher is not self.cipher or self.aead is None:
            if type(cipher) is not GCMCipher:
                return None
            self.cipher, self.aead = cipher, AESGCM(cipher._key)
            self.keys += 1
        return cipher, self.aead

    def _padding(self, n: int) -> bytes:
        at = self.pad_at
        if at + n > len(self.pad):
            self.pad, at = os.urandom(_POOL), 0
        self.pad_at = at + n
        return self.pad[at : at + n]

    def _rekey_due(self) -> bool:
        conn = self.conn
        if conn._rekey_bytes_sent >= conn._rekey_bytes:
            return True
        return bool(conn._rekey_seconds) and time.monotonic() >= conn._rekey_time

    def _ready(self, chan: Any) -> tuple[Any, AESGCM] | None:
        """The cipher and AESGCM to send on `chan` with now, or None (asyncssh's own path)."""
        if not chan._send_window or self.conn._transport is None or self._rekey_due():
            return None
        return self._aead()

    def send(self, chan: Any, data: bytes) -> None:
        """Write `data` on `chan`: packets the window allows now, the rest through asyncssh."""
        keyed = None if chan._send_buf or chan._send_state != "open" else self._ready(chan)
        if keyed is None:
            chan.write(data)  # waits in asyncssh's buffer, or goes out its own way
            self._take_flushes(chan)
            return
        view = memoryview(data)
        off = self._emit(chan, view, *keyed)
        if off < len(view):
            chan.write(bytes(view[off:]))  # waits in asyncssh's buffer for a window adjust
            self._take_flushes(chan)

    def flush(self, chan: Any) -> None:
        """Send what waits in `chan`'s own buffer through the fast path, as the window allows."""
        queue = chan._send_buf
        while queue and chan._send_state in _SENDING:
            buf, datatype = queue[0]
            keyed = None if datatype is not None else self._ready(chan)
            if keyed is None:
                return
            with memoryview(buf) as view:
                k = self._emit(chan, view, *keyed)
            if k == len(buf):
                del queue[0]
            else:
                del buf[:k]
            chan._send_buf_len -= k

    def _take_flushes(self, chan: Any) -> None:
        """Route asyncssh's window-driven flushes of `chan` through `flush` from now on."""
        if not isinstance(chan.__dict__.get("_flush_send_buf"), _Flush):
            chan._flush_send_buf = _Flush(self, chan._flush_send_buf)

    def _emit(self, chan: Any, view: memoryview, cipher: Any, aead: AESGCM) -> int:
        """Send packets of `view` while the window and the rekey limit allow; bytes sent."""
        conn = self.conn
        hdrlen, block = conn._send_enchdrlen, conn._send_blocksize
        recipient, limit = chan._send_chan, chan._send_pktsize
        total, off = len(view), 0
        out: list[bytes] = []
        while off < total and chan._send_window and conn._rekey_bytes_sent < conn._rekey_bytes:
            n = min(total - off, chan._send_window, limit)
            padlen = -(hdrlen + 9 + n) % block
            if padlen < 4:
                padlen += block
            pktlen = 10 + n + padlen
            head = _HEAD.pack(padlen, MSG_CHANNEL_DATA, recipient, n)
            plain = b"".join((head, view[off : off + n], self._padding(padlen)))
            header = _LEN.pack(pktlen)
            out.append(header)
            out.append(aead.encrypt(cipher._iv, plain, header))
            cipher._update_iv()
            conn._send_seq = (conn._send_seq + 1) & 0xFFFFFFFF
            conn._rekey_bytes_sent += pktlen
            chan._send_window -= n
            off += n
        if out:
            self.packets += len(out) // 2
            with contextlib.suppress(ConnectionError):  # as asyncssh's own _send does
                conn._transport.writelines(out)
        return off


_SENDING = frozenset({"open", "eof_pending", "close_pending"})  # data still goes out


class _Flush:
    """A channel's `_flush_send_buf`: the fast path first, then asyncssh's for the rest."""

    __slots__ = ("orig", "sender")

    def __init__(self, sender: FastSender, orig: Any) -> None:
        self.sender, self.orig = sender, orig

    def __call__(self) -> None:
        chan = self.orig.__self__
        self.sender.flush(chan)
        self.orig()  # what is left, EOF or close when the buffer is empty, writing pauses


_ATTR = "_quotarelay_fastsend"


def fast_sender(conn: Any) -> FastSender | None:
    """The connection's `FastSender`, made on first use; None where the fast path is off."""
    if not ENABLED or conn is None:
        return None
    sender = conn.__dict__.get(_ATTR)
    if not isinstance(sender, FastSender):
        sender = FastSender(conn)
        conn.__dict__[_ATTR] = sender
    return sender
