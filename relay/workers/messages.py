"""What a relay's workers and their supervisor tell each other over a unix socket.

Invariants:
- Every message is one msgspec struct of the tagged union `Message`, framed as
  a 4-byte big-endian length and its msgpack body; a frame above MAX_FRAME or a
  body that does not decode is a protocol error (`IpcError`), never guessed at.
- Byte counts are cumulative where they say `_total`, so a report sent twice
  changes nothing; grants and give-backs are deltas, each sent once.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from quota.agent.journal import StreamFigures
from quota.contract import wire
from relay.errors import RelayError
from relay.streamlog.record import StreamRecord

MAX_FRAME = 16 * 1024 * 1024
_LEN = struct.Struct(">I")


class IpcError(RelayError):
    """A frame between a worker and its supervisor is malformed."""


class Msg(msgspec.Struct, frozen=True, kw_only=True, tag=True, tag_field="t"):
    pass


# -- worker -> supervisor ------------------------------------------------------------


class Ready(Msg, frozen=True, kw_only=True):
    worker: int
    pid: int


class Want(Msg, frozen=True, kw_only=True):
    agent_id: str
    nbytes: int
    need: int  # of `nbytes`, what streams wait for


class GiveBack(Msg, frozen=True, kw_only=True):
    agent_id: str
    nbytes: int
    used_total: int  # the worker's use of this agent's bytes, up to the give-back


class Usage(Msg, frozen=True, kw_only=True):
    """What a worker relayed, cumulative for its process, and what it holds."""

    used_total: dict[str, int]  # agent -> bytes passed against its sub-lease
    tunnel_bytes: list[tuple[str, str, int]]  # (agent, tunnel, bytes) for billing
    tunnel_ms: list[tuple[str, str, int]]  # (agent, tunnel, ms) tunnel time
    tunnels: int
    holding: list[str]  # agents with a tunnel in this worker
    connections: dict[str, int]
    refused: dict[str, int]
    directions: list[tuple[str, str, str, int]] = []  # (agent, tunnel, "up"/"down", bytes)
    pauses: dict[str, int] = {}  # pause reason -> count
    logged_in: int = 0  # agents' SSH connections past login
    ssh_refused: dict[str, int] = {}  # refusals after login, by cause (the metrics' "ssh" kind)
    seq: int = 0  # the `Flush` this report answers (0: a report on the worker's own cadence)
    # answering a Flush: each live stream as the admin API shows it (relay.hub.control)
    live: list[dict[str, Any]] = []
    # with billing: the id prefix of this worker's streams, and the figures of those that
    # changed since its previous report, taken with `tunnel_bytes` (relay.workers.figures)
    run: str = ""
    figures: list[StreamFigures] = []


class LeaseRound(Msg, frozen=True, kw_only=True):
    """A tunnel opened here: run a sync round of the relay now, answer when it ended.

    Sent after a report that shows the tunnel, so the round primes its lease.
    """

    req: int


class Records(Msg, frozen=True, kw_only=True):
    records: list[StreamRecord]


class Login(Msg, frozen=True, kw_only=True):
    """What became of a connection the supervisor passed: a rejected key, a login, its close."""

    ticket: int
    event: str  # "auth_failed" | "authenticated" | "closed"
    agent_id: str = ""
    username: str = ""


class TakeShare(Msg, frozen=True, kw_only=True):
    """Ask the relay for one of an agent's per-agent fair shares (relay.workers.shares)."""

    req: int
    share: str  # a quota.core.shares.Share value, one counted per agent
    agent_id: str


class ReleaseShare(Msg, frozen=True, kw_only=True):
    """Give back one per-agent share the relay granted."""

    share: str
    agent_id: str


# -- supervisor -> worker ------------------------------------------------------------


class ShareAnswer(Msg, frozen=True, kw_only=True):
    """The relay's answer to a TakeShare: granted, or refused with the message the agent sees."""

    req: int
    share: str
    agent_id: str
    ok: bool
    message: str = ""
    cause: str = ""


class Grant(Msg, frozen=True, kw_only=True):
    agent_id: str
    nbytes: int


class RoundDone(Msg, frozen=True, kw_only=True):
    """The sync round a LeaseRound asked for ended; its grants were sent before this."""

    req: int


class Recall(Msg, frozen=True, kw_only=True):
    """Give back what you hold of this agent's bytes and do not need now."""

    agent_id: str


class Flush(Msg, frozen=True, kw_only=True):
    """Send your pending records and a report now (before an admin read or a scrape)."""

    seq: int


class LeaseAnswered(Msg, frozen=True, kw_only=True):
    """Billing gave an agent less than asked (`exhausted`), or all of it: why its streams wait."""

    agent_id: str
    exhausted: bool


class PauseStream(Msg, frozen=True, kw_only=True):
    """An operator pauses a live stream of this worker, or lifts that pause."""

    stream_id: str
    paused: bool


class SetLowWater(Msg, frozen=True, kw_only=True):
    """This worker's share of the relay's low-water mark for an agent."""

    agent_id: str
    nbytes: int


class SetActive(Msg, frozen=True, kw_only=True):
    agent_id: str
    active: bool


class Agents(Msg, frozen=True, kw_only=True):
    """The agent registry the billing API sent (billing mode only)."""

    agents: list[wire.RelayAgent]


# -- on the descriptor channel: connections to the SSH port (relay.workers.door) ----------


class Passed(Msg, frozen=True, kw_only=True):
    """A connection the supervisor's gate admitted; the message carries its descriptor."""

    ticket: int
    trusted: bool = False  # from an address where an agent holding tunnels is logged in


class Dismiss(Msg, frozen=True, kw_only=True):
    """The supervisor's gate tells a passed connection to go (a `quota.core.admission.Reason`)."""

    ticket: int
    reason: str


# -- reaching an endpoint held by another worker (on the descriptor channel) --------------


class Reach(Msg, frozen=True, kw_only=True):
    """A support agent in one worker asks for an endpoint; the supervisor asks the others."""

    req: int
    account: str
    name: str
    port: int
    support_id: str
    orig_host: str
    orig_port: int
    udp: bool = False  # a UDP endpoint ("udp/<name>"): its framed channel crosses instead


class Reached(Msg, frozen=True, kw_only=True):
    """The answer; with status "ok" the message carries one end of the stream's socket pair."""

    req: int
    status: str  # "ok" | "none" (no such endpoint here) | "refused" (message says why)
    message: str = ""


Message = (
    Ready
    | Want
    | GiveBack
    | Usage
    | Records
    | LeaseRound
    | RoundDone
    | Login
    | TakeShare
    | ReleaseShare
    | ShareAnswer
    | Passed
    | Dismiss
    | Grant
    | Recall
    | SetActive
    | SetLowWater
    | Agents
    | Flush
    | LeaseAnswered
    | PauseStream
    | Reach
    | Reached
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def frame(message: Message) -> bytes:
    body = _encoder.encode(message)
    return _LEN.pack(len(body)) + body


def decode(body: bytes) -> Message:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise IpcError(f"worker message does not decode: {exc}") from None


def frame_length(header: bytes) -> int:
    n: int = _LEN.unpack(header)[0]
    if n > MAX_FRAME:
        raise IpcError(f"worker message of {n} bytes is above the limit of {MAX_FRAME}")
    return n
