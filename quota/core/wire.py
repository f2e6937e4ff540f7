"""The billing API's request and answer messages, parsed strictly from JSON.

Invariants:
- Every message is a frozen, slotted, keyword-only dataclass; `parse` builds one
  only from a JSON object whose keys are exactly known fields with the right
  types: unknown fields, a bool where an int is due, a negative number where a
  count is due (unless the field is `signed`) and anything above 2**62 are
  refused with a `WireError` naming the field path ("items[2].bytes").
- `dump(parse(cls, x)) == x` for every valid `x` with all fields present.
- Money is integer millicoins, bytes and seconds are integers, times are integer
  milliseconds since the epoch; no float is accepted anywhere.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quota.core.errors import InvalidValue

MAX_INT = 2**62
MAX_STR = 8192

T = TypeVar("T")


class WireError(InvalidValue):
    """A message does not match its schema; the text names the offending field."""


def signed() -> Any:
    """Mark an int field that may be negative (corrections, ledger amounts)."""
    return field(metadata={"signed": True})


def choice(*values: str, default: Any = dataclasses.MISSING) -> Any:
    """Mark a str field that must be one of `values`."""
    return field(default=default, metadata={"choices": values})


def _check_int(value: Any, path: str, is_signed: bool) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{path}: expected an integer, got {type(value).__name__}")
    low = -MAX_INT if is_signed else 0
    if not low <= value <= MAX_INT:
        bound = f"{low}..2**62"
        raise WireError(f"{path}: {value} is out of range ({bound})")
    return value


def _convert(tp: Any, value: Any, path: str, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path, meta)
    if origin is list:
        if not isinstance(value, list):
            raise WireError(f"{path}: expected a list, got {type(value).__name__}")
        if len(value) > 10_000:
            raise WireError(f"{path}: too many items ({len(value)} > 10000)")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise WireError(f"{path}: expected true or false, got {type(value).__name__}")
        return value
    if tp is int:
        return _check_int(value, path, bool(meta.get("signed")))
    if tp is str:
        if not isinstance(value, str):
            raise WireError(f"{path}: expected a string, got {type(value).__name__}")
        if len(value) > MAX_STR:
            raise WireError(f"{path}: longer than {MAX_STR} characters")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise WireError(f"{path}: {value!r} is not one of {', '.join(choices)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _parse_at(typing.cast(type[Any], tp), value, path)
    raise TypeError(f"unsupported wire type {tp!r}")  # a bug in a message definition


_Schema = tuple[dict[str, Any], dict[str, "dataclasses.Field[Any]"]]
_SCHEMAS: dict[type[Any], _Schema] = {}


def _schema(cls: type[Any]) -> _Schema:
    """A message class's field types and fields, worked out once per class."""
    found = _SCHEMAS.get(cls)
    if found is None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        found = _SCHEMAS[cls] = (typing.get_type_hints(cls), fields)
    return found


def _parse_at(cls: type[T], data: Any, path: str) -> T:
    where = path or "body"
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints, fields = _schema(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise WireError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise WireError(f"{sub}: missing")
            continue
        values[name] = _convert(hints[name], data[name], sub, f.metadata)
    return cls(**values)


def parse(cls: type[T], data: Any) -> T:
    """Build a `cls` message from decoded JSON, or raise `WireError` naming the field."""
    return _parse_at(cls, data, "")


def dump(message: Any) -> Any:
    """Turn a message (or list of them) into plain JSON values."""
    if dataclasses.is_dataclass(message) and not isinstance(message, type):
        return {f.name: dump(getattr(message, f.name)) for f in dataclasses.fields(message)}
    if isinstance(message, list | tuple):
        return [dump(m) for m in message]
    return message


ROLES = ("client", "support", "dual")
KINDS = (
    "deposit",
    "subscription",
    "renewal",
    "package",
    "traffic",
    "metered_traffic",
    "tunnel_time",
    "proration_credit",
    "expiry",
    "correction",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateAccountRequest:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    id: str
    name: str
    balance: int  # millicoins
    version: int
    frozen: bool
    frozen_reason: str | None
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountCreated:
    account: Account
    token: str  # shown once; the service keeps only its hash


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositIntentRequest:
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositIntent:
    id: str
    account_id: str
    amount: int
    created_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositRequest:
    account_id: str
    payment_id: str
    amount: int
    intent_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    id: int
    account_id: str
    agent_id: str | None
    kind: str = choice(*KINDS)
    amount: int = signed()  # millicoins, + credit, - debit
    balance_after: int
    traffic_bytes: int = signed()  # change of the agent's remaining traffic
    used_bytes: int  # bytes of usage this entry accounts for
    idempotency_key: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DepositResult:
    status: str = choice("credited", "review")
    payment_id: str
    amount: int
    entry: LedgerEntry | None
    account: Account
    renewed: list[str]  # agents renewed because this deposit unfroze the account


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterAgentRequest:
    name: str
    role: str = choice(*ROLES)
    public_keys: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentKey:
    id: str
    public_key: str
    revoked: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    id: str
    account_id: str
    name: str
    role: str = choice(*ROLES)
    status: str = choice("active", "inactive")
    plan: str | None
    active_until: int | None
    auto_renew: bool
    allow_metered: bool
    bucket_bytes: int
    package_bytes: int
    traffic_remaining: int
    topup_package: str | None
    topup_limit: int
    topup_spent: int
    topup_below: int
    topup_blocked: bool
    keys: list[AgentKey]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentList:
    agents: list[Agent]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettingsRequest:
    auto_renew: bool | None = None
    allow_metered: bool | None = None
    topup_package: str | None = None  # "" turns auto top-up off
    topup_limit: int | None = None  # millicoins per period
    topup_below: int | None = None  # bytes: buy when remaining would fall below


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeRequest:
    plan: str
    auto_renew: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangePlanRequest:
    plan: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyPackageRequest:
    package: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargeResult:
    agent: Agent
    account: Account
    entries: list[LedgerEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectionRequest:
    amount: int = signed()
    reason: str
    agent_id: str | None = None
    traffic_bytes: int = field(default=0, metadata={"signed": True})


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageItem:
    agent_id: str
    bytes: int = 0
    tunnel_seconds: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageReport:
    seq: int  # per relay, applied once
    items: list[UsageItem]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentGrant:
    agent_id: str
    status: str = choice("active", "inactive", "unknown")
    traffic_remaining: int
    metered: bool  # may draw traffic from the balance beyond traffic_remaining
    unbilled_bytes: int  # bytes of this report nobody could pay for


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageResult:
    relay_id: str
    seq: int
    duplicate: bool
    agents: list[AgentGrant]


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerPage:
    entries: list[LedgerEntry]
    next_cursor: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanInfo:
    name: str
    kind: str = choice("periodic", "tunnel_time")
    price: int
    period_ms: int
    traffic: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PackageInfo:
    name: str
    price: int
    traffic: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalogue:
    plans: list[PlanInfo]
    packages: list[PackageInfo]
    metered_price_per_gb: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceResult:
    renewed: int
    expired: int
    lapsed: int
    frozen_accounts: list[str]


# -- the relay sync contract (relay <-> billing API) ------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncItem:
    """Usage of one tunnel since the relay's previous report (deltas, applied once)."""

    agent_id: str
    tunnel_id: str = ""
    bytes: int = 0
    tunnel_seconds: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRequest:
    """What a relay asks of one agent's lease: more bytes, and bytes it gives back."""

    agent_id: str
    want: int = 0  # bytes the relay would like added to its lease now
    returned: int = 0  # bytes of its lease it gives back (a delta, applied once)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncRequest:
    seq: int  # per relay, from 1, applied exactly once whatever the retries
    items: list[SyncItem] = field(default_factory=list)
    leases: list[LeaseRequest] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """One agent's lease on the asking relay after this report."""

    agent_id: str
    status: str = choice("active", "inactive", "unknown")
    granted_total: int  # cumulative bytes ever granted to this relay for this agent
    valid_until: int  # ms since the epoch
    traffic_remaining: int  # the agent's bucket and packages after this report
    unbilled_bytes: int  # bytes of this report nobody could pay for


@dataclass(frozen=True, slots=True, kw_only=True)
class TopupNote:
    agent_id: str
    package: str
    count: int
    amount: int  # millicoins drawn


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncAnswer:
    relay_id: str
    seq: int
    duplicate: bool  # this seq was applied before: this is the first answer again
    leases: list[Lease]
    topups: list[TopupNote]


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayAgent:
    """An agent as relays see it: enough to authenticate and route, nothing about money."""

    id: str
    account_id: str
    name: str
    role: str = choice(*ROLES)
    status: str = choice("active", "inactive")
    public_keys: list[str]  # keys not revoked, OpenSSH format


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayAgentList:
    agents: list[RelayAgent]


@dataclass(frozen=True, slots=True, kw_only=True)
class PushEvent:
    """Sent to relays on the push channel the moment something changed for these agents."""

    type: str = choice("hello", "changed")
    agent_ids: list[str] = field(default_factory=list)
    reason: str = ""  # deposit, package, renewal, topup, freeze, unfreeze, revoke, settings, ...
