"""The billing API's request and answer messages, decoded strictly by msgspec.

Invariants:
- Every message is a frozen, keyword-only `msgspec.Struct` that forbids unknown
  fields; `parse` builds one only from a JSON object whose keys are known fields
  with the right types: unknown fields, a bool where an int is due, a negative
  number where a count is due (unless the field is `Signed`), anything above
  2**62, a role or kind that is not a member of its enum are refused with a
  `WireError` naming the field path ("items[2].bytes").
- `dump(parse(cls, x)) == x` for every valid `x` with all fields present.
- Money is integer millicoins, bytes and seconds are integers, times are integer
  milliseconds since the epoch; no float is accepted anywhere.
- Roles and kinds are the domain's own enums (`AgentRole`, `EntryKind`,
  `PlanKind`), not copies of their values.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from quota.contract.codec import MAX_INT, MAX_STR, Count, Items, Positive, Signed, Text, explain
from quota.core.billing import AgentRole, EntryKind, PlanKind
from quota.core.errors import InvalidValue

__all__ = ["KINDS", "MAX_INT", "MAX_STR", "ROLES", "WireError", "dump", "parse"]

T = TypeVar("T")

ROLES = tuple(r.value for r in AgentRole)
KINDS = tuple(k.value for k in EntryKind)


class WireError(InvalidValue):
    """A message does not match its schema; the text names the offending field."""


class Message(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of every wire message: immutable, keyword-only, strict."""


def parse(cls: type[T], data: Any) -> T:
    """Build a `cls` message from decoded JSON, or raise `WireError` naming the field."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise WireError(explain(exc, cls, data)) from None


def dump(message: Any) -> Any:
    """Turn a message (or list of them) into plain JSON values."""
    return msgspec.to_builtins(message)


class ErrorBody(Message, frozen=True, kw_only=True):
    error: Text


class CreateAccountRequest(Message, frozen=True, kw_only=True):
    name: Text


class Account(Message, frozen=True, kw_only=True):
    id: Text
    name: Text
    balance: Count  # millicoins
    version: Count
    frozen: bool
    frozen_reason: Text | None
    created_at: Count


class AccountCreated(Message, frozen=True, kw_only=True):
    account: Account
    token: Text  # shown once; the service keeps only its hash


class DepositIntentRequest(Message, frozen=True, kw_only=True):
    amount: Positive


class DepositIntent(Message, frozen=True, kw_only=True):
    id: Text
    account_id: Text
    amount: Count
    created_at: Count


class DepositRequest(Message, frozen=True, kw_only=True):
    account_id: Text
    payment_id: Text
    amount: Positive
    intent_id: Text | None = None


class LedgerEntry(Message, frozen=True, kw_only=True):
    id: Count
    account_id: Text
    agent_id: Text | None
    kind: EntryKind
    amount: Signed  # millicoins, + credit, - debit
    balance_after: Count
    traffic_bytes: Signed  # change of the agent's remaining traffic
    used_bytes: Count  # bytes of usage this entry accounts for
    idempotency_key: Text
    reason: Text
    at: Count


class DepositResult(Message, frozen=True, kw_only=True):
    status: Literal["credited", "review"]
    payment_id: Text
    amount: Count
    entry: LedgerEntry | None
    account: Account
    renewed: Items[Text]  # agents renewed because this deposit unfroze the account


class RegisterAgentRequest(Message, frozen=True, kw_only=True):
    name: Text
    role: AgentRole
    public_keys: Items[Text]


class AgentKey(Message, frozen=True, kw_only=True):
    id: Text
    public_key: Text
    revoked: bool


class Agent(Message, frozen=True, kw_only=True):
    id: Text
    account_id: Text
    name: Text
    role: AgentRole
    status: Literal["active", "inactive"]
    plan: Text | None
    active_until: Count | None
    auto_renew: bool
    allow_metered: bool
    bucket_bytes: Count
    package_bytes: Count
    traffic_remaining: Count
    topup_package: Text | None
    topup_limit: Count
    topup_spent: Count
    topup_below: Count
    topup_blocked: bool
    keys: Items[AgentKey]


class AgentList(Message, frozen=True, kw_only=True):
    agents: Items[Agent]


class AgentSettingsRequest(Message, frozen=True, kw_only=True):
    auto_renew: bool | None = None
    allow_metered: bool | None = None
    topup_package: Text | None = None  # "" turns auto top-up off
    topup_limit: Count | None = None  # millicoins per period
    topup_below: Count | None = None  # bytes: buy when remaining would fall below


class SubscribeRequest(Message, frozen=True, kw_only=True):
    plan: Text
    auto_renew: bool = True


class ChangePlanRequest(Message, frozen=True, kw_only=True):
    plan: Text


class BuyPackageRequest(Message, frozen=True, kw_only=True):
    package: Text


class ChargeResult(Message, frozen=True, kw_only=True):
    agent: Agent
    account: Account
    entries: Items[LedgerEntry]


class CorrectionRequest(Message, frozen=True, kw_only=True):
    amount: Signed
    reason: Text
    agent_id: Text | None = None
    traffic_bytes: Signed = 0


class LedgerPage(Message, frozen=True, kw_only=True):
    entries: Items[LedgerEntry]
    next_cursor: Count | None


class TunnelUsageTotal(Message, frozen=True, kw_only=True):
    """What relays reported for one tunnel of one agent within a time range."""

    agent_id: Text
    tunnel_id: Text  # the relay's id of the tunnel ("" for usage sent without one)
    bytes: Count
    tunnel_seconds: Count
    reports: Count  # relay reports that named it
    first_at: Count  # ms since the epoch: the first such report
    last_at: Count  # and the last


class AgentUsageTotal(Message, frozen=True, kw_only=True):
    agent_id: Text
    bytes: Count
    tunnel_seconds: Count


class UsageSummary(Message, frozen=True, kw_only=True):
    """An account's usage over `since <= at < until`, per agent and tunnel, from the raw reports."""

    account_id: Text
    since: Count
    until: Count
    agents: Items[AgentUsageTotal]
    tunnels: Items[TunnelUsageTotal]
    bytes: Count
    tunnel_seconds: Count


class ConsoleLink(Message, frozen=True, kw_only=True):
    """A one-time sign-in link to the web console: its path on the billing API, shown once."""

    account_id: Text
    path: Text  # /console/link/<token>; the service keeps only the token's hash
    expires_at: Count


class PlanInfo(Message, frozen=True, kw_only=True):
    name: Text
    kind: PlanKind
    price: Count
    period_ms: Count
    traffic: Count


class PackageInfo(Message, frozen=True, kw_only=True):
    name: Text
    price: Count
    traffic: Count


class Catalogue(Message, frozen=True, kw_only=True):
    plans: Items[PlanInfo]
    packages: Items[PackageInfo]
    metered_price_per_gb: Count


class MaintenanceResult(Message, frozen=True, kw_only=True):
    renewed: Count
    expired: Count
    lapsed: Count
    frozen_accounts: Items[Text]


# -- the relay sync contract (relay <-> billing API) ------------------------------------


class SyncItem(Message, frozen=True, kw_only=True):
    """Usage of one tunnel since the relay's previous report (deltas, applied once)."""

    agent_id: Text
    tunnel_id: Text = ""
    bytes: Count = 0
    tunnel_seconds: Count = 0


class LeaseRequest(Message, frozen=True, kw_only=True):
    """What a relay asks of one agent's lease: more bytes, and bytes it gives back."""

    agent_id: Text
    want: Count = 0  # bytes the relay would like added to its lease now
    returned: Count = 0  # bytes of its lease it gives back (a delta, applied once)


class SyncRequest(Message, frozen=True, kw_only=True):
    seq: Count  # per relay, from 1, applied exactly once whatever the retries
    items: Items[SyncItem] = []
    leases: Items[LeaseRequest] = []


class Lease(Message, frozen=True, kw_only=True):
    """One agent's lease on the asking relay after this report."""

    agent_id: Text
    status: Literal["active", "inactive", "unknown"]
    granted_total: Count  # cumulative bytes ever granted to this relay for this agent
    valid_until: Count  # ms since the epoch
    traffic_remaining: Count  # the agent's bucket and packages after this report
    unbilled_bytes: Count  # bytes of this report nobody could pay for


class TopupNote(Message, frozen=True, kw_only=True):
    agent_id: Text
    package: Text
    count: Count
    amount: Count  # millicoins drawn


class SyncAnswer(Message, frozen=True, kw_only=True):
    relay_id: Text
    seq: Count
    duplicate: bool  # this seq was applied before: this is the first answer again
    leases: Items[Lease]
    topups: Items[TopupNote]


class RelayAgent(Message, frozen=True, kw_only=True):
    """An agent as relays see it: enough to authenticate and route, nothing about money."""

    id: Text
    account_id: Text
    name: Text
    role: AgentRole
    status: Literal["active", "inactive"]
    public_keys: Items[Text]  # keys not revoked, OpenSSH format


class RelayAgentList(Message, frozen=True, kw_only=True):
    agents: Items[RelayAgent]


class PushEvent(Message, frozen=True, kw_only=True):
    """Sent to relays on the push channel the moment something changed for these agents."""

    type: Literal["hello", "changed"]
    agent_ids: Items[Text] = []
    reason: Text = ""  # deposit, package, renewal, topup, freeze, unfreeze, revoke, settings, ...
    # this relay's leases of these agents after the change (a purchase granted bytes its
    # waiting streams asked for): cumulative, as in a sync answer, so none is applied twice
    leases: Items[Lease] = []


class WebhookDelivery(Message, frozen=True, kw_only=True):
    """One notice in the webhook outbox, and how its delivery stands."""

    id: Text  # the event id: the body's `id` and the Quotarelay-Event-Id header
    kind: Text  # low_balance, account_frozen, account_unfrozen, deposit_review
    at: Count  # when the notice was made
    # none: no webhook was configured when it was made; failed: given up after the retries
    state: Literal["pending", "delivered", "failed", "none"]
    attempts: Count
    next_attempt_at: Count | None  # when a pending notice is tried next
    delivered_at: Count | None
    last_error: Text | None  # of the last failed attempt


class WebhookDeliveryPage(Message, frozen=True, kw_only=True):
    deliveries: Items[WebhookDelivery]
    next_cursor: Count | None
