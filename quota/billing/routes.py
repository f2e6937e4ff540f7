"""The route table: one entry per endpoint, shared by the app and the OpenAPI document.

Invariant: the app accepts exactly the `request` message of a route and answers
with its `response` message, and the OpenAPI document is generated from these
same entries, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quota.billing.agents import BillingService
from quota.billing.errors import BadRequest
from quota.billing.service import Principal
from quota.contract import wire

Handler = Callable[[BillingService, Principal, dict[str, str], Any, str], Awaitable[Any]]

ADMIN = frozenset({"admin"})
OWNER = frozenset({"admin", "account"})
RELAY = frozenset({"relay"})
ANY = frozenset({"admin", "account", "relay"})
LEDGER_QUERY = ("after", "limit", "agent_id", "kind", "since", "until")


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    method: str
    path: str
    name: str
    summary: str
    auth: frozenset[str]
    request: type | None
    response: type
    status: int
    handler: Handler
    keyed: bool = True  # mutations need an Idempotency-Key header
    query: tuple[str, ...] = ()
    websocket: bool = False  # upgrades; `response` is the message each frame carries
    description: str = ""


def _int_query(query: dict[str, str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > high:
        raise BadRequest(f"{name}: must be an integer 0..{high}")
    return int(raw)


async def _ledger(s: BillingService, who: Principal, m: dict[str, str], q: Any, _: str) -> Any:
    unknown = set(q) - set(LEDGER_QUERY)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    filters: dict[str, object] = {}
    if "agent_id" in q:
        filters["agent_id"] = q["agent_id"]
    if "kind" in q:
        if q["kind"] not in wire.KINDS:
            raise BadRequest(f"kind: {q['kind']!r} is not one of {', '.join(wire.KINDS)}")
        filters["kind"] = q["kind"]
    for bound in ("since", "until"):
        if bound in q:
            filters[bound] = _int_query(q, bound, 0, wire.MAX_INT)
    return await s.ledger(
        who,
        m["account_id"],
        after=_int_query(q, "after", 0, wire.MAX_INT),
        limit=max(1, _int_query(q, "limit", 100, 1000)),
        filters=filters,
    )


async def _upgrade_only(s: BillingService, w: Principal, m: dict[str, str], b: Any, k: str) -> Any:
    raise BadRequest("this endpoint upgrades to a WebSocket; send Upgrade: websocket")


def _r(
    method: str,
    path: str,
    name: str,
    summary: str,
    auth: frozenset[str],
    request: type | None,
    response: type,
    handler: Handler,
    status: int = 200,
    **extra: Any,
) -> Route:
    return Route(
        method=method,
        path=path,
        name=name,
        summary=summary,
        auth=auth,
        request=request,
        response=response,
        status=status,
        handler=handler,
        **extra,
    )


ROUTES: tuple[Route, ...] = (
    _r(
        "GET",
        "/v1/catalogue",
        "getCatalogue",
        "Plans, packages and the metered price",
        ANY,
        None,
        wire.Catalogue,
        lambda s, w, m, b, k: s.catalogue(),
        keyed=False,
    ),
    _r(
        "POST",
        "/v1/accounts",
        "createAccount",
        "Create an account; answers its token once",
        ADMIN,
        wire.CreateAccountRequest,
        wire.AccountCreated,
        lambda s, w, m, b, k: s.create_account(w, k, b),
        201,
    ),
    _r(
        "GET",
        "/v1/accounts/{account_id}",
        "getAccount",
        "Balance, version and freeze state",
        OWNER,
        None,
        wire.Account,
        lambda s, w, m, b, k: s.get_account(w, m["account_id"]),
        keyed=False,
    ),
    _r(
        "POST",
        "/v1/accounts/{account_id}/deposit-intents",
        "createDepositIntent",
        "Announce a deposit and its expected amount (millicoins)",
        OWNER,
        wire.DepositIntentRequest,
        wire.DepositIntent,
        lambda s, w, m, b, k: s.deposit_intent(w, k, m["account_id"], b),
        201,
    ),
    _r(
        "POST",
        "/v1/deposits",
        "deposit",
        "Payment-provider webhook: credit a payment once per payment_id",
        ADMIN,
        wire.DepositRequest,
        wire.DepositResult,
        lambda s, w, m, b, k: s.deposit(w, b),
        keyed=False,
    ),
    _r(
        "POST",
        "/v1/accounts/{account_id}/corrections",
        "correct",
        "Operator correction: a new ledger entry (signed amount and traffic)",
        ADMIN,
        wire.CorrectionRequest,
        wire.LedgerEntry,
        lambda s, w, m, b, k: s.correction(w, k, m["account_id"], b),
        201,
    ),
    _r(
        "GET",
        "/v1/accounts/{account_id}/ledger",
        "getLedger",
        "Ledger entries oldest first; page with after=next_cursor",
        OWNER,
        None,
        wire.LedgerPage,
        _ledger,
        keyed=False,
        query=LEDGER_QUERY,
    ),
    _r(
        "POST",
        "/v1/accounts/{account_id}/agents",
        "registerAgent",
        "Register an agent",
        OWNER,
        wire.RegisterAgentRequest,
        wire.Agent,
        lambda s, w, m, b, k: s.register_agent(w, k, m["account_id"], b),
        201,
    ),
    _r(
        "GET",
        "/v1/accounts/{account_id}/agents",
        "listAgents",
        "The account's agents",
        OWNER,
        None,
        wire.AgentList,
        lambda s, w, m, b, k: s.list_agents(w, m["account_id"]),
        keyed=False,
    ),
    _r(
        "GET",
        "/v1/agents/{agent_id}",
        "getAgent",
        "One agent",
        OWNER,
        None,
        wire.Agent,
        lambda s, w, m, b, k: s.get_agent(w, m["agent_id"]),
        keyed=False,
    ),
    _r(
        "PATCH",
        "/v1/agents/{agent_id}",
        "updateAgentSettings",
        "Auto-renew, metered traffic and auto top-up settings",
        OWNER,
        wire.AgentSettingsRequest,
        wire.Agent,
        lambda s, w, m, b, k: s.update_settings(w, k, m["agent_id"], b),
    ),
    _r(
        "DELETE",
        "/v1/agents/{agent_id}/keys/{key_id}",
        "revokeKey",
        "Revoke an SSH key",
        OWNER,
        None,
        wire.Agent,
        lambda s, w, m, b, k: s.revoke_key(w, k, m["agent_id"], m["key_id"]),
    ),
    _r(
        "POST",
        "/v1/agents/{agent_id}/subscription",
        "subscribe",
        "Subscribe an inactive agent to a plan",
        OWNER,
        wire.SubscribeRequest,
        wire.ChargeResult,
        lambda s, w, m, b, k: s.subscribe(w, k, m["agent_id"], b),
    ),
    _r(
        "POST",
        "/v1/agents/{agent_id}/plan",
        "changePlan",
        "Change plan with proration, all or nothing",
        OWNER,
        wire.ChangePlanRequest,
        wire.ChargeResult,
        lambda s, w, m, b, k: s.change_plan(w, k, m["agent_id"], b),
    ),
    _r(
        "POST",
        "/v1/agents/{agent_id}/packages",
        "buyPackage",
        "Buy a traffic package",
        OWNER,
        wire.BuyPackageRequest,
        wire.ChargeResult,
        lambda s, w, m, b, k: s.buy_package(w, k, m["agent_id"], b),
    ),
    _r(
        "POST",
        "/v1/usage",
        "reportUsage",
        "Relay usage report, applied once per (relay, seq); answers grants",
        RELAY,
        wire.UsageReport,
        wire.UsageResult,
        lambda s, w, m, b, k: s.report_usage(w, b),
        keyed=False,
    ),
    _r(
        "POST",
        "/v1/sync",
        "sync",
        "Relay sync: usage, lease returns and requests, applied once per (relay, seq)",
        RELAY,
        wire.SyncRequest,
        wire.SyncAnswer,
        lambda s, w, m, b, k: s.sync(w, b),
        keyed=False,
        description="One transaction: a seq applied before answers its first answer with "
        "duplicate=true and changes nothing. Usage is charged (bucket, packages, metered, "
        "auto top-up, tunnel time); each agent's lease on this relay grows by at most what "
        "the agent can pay for beyond every relay's outstanding leases; every lease of the "
        "relay is extended to now + lease_ttl. granted_total is cumulative.",
    ),
    _r(
        "GET",
        "/v1/relay/agents",
        "listRelayAgents",
        "Every agent with its state and its SSH keys not revoked",
        RELAY,
        None,
        wire.RelayAgentList,
        lambda s, w, m, b, k: s.relay_agents(),
        keyed=False,
    ),
    _r(
        "GET",
        "/v1/relay/events",
        "relayEvents",
        "Push channel: a WebSocket of PushEvent messages",
        RELAY,
        None,
        wire.PushEvent,
        _upgrade_only,
        101,
        keyed=False,
        websocket=True,
        description="Upgrades to a WebSocket (Connection: Upgrade, Upgrade: websocket, "
        "with the relay token as Authorization: Bearer). The server sends JSON text "
        "messages, each a PushEvent: first {type: hello}, then {type: changed, agent_ids, "
        "reason} after every committed change a relay acts on (deposit, unfreeze, package, "
        "subscription, plan, renewal, expiry, lapse, topup, freeze, register, revoke, "
        "settings, correction). Pings every 10 s. The relay sends nothing. A relay that "
        "falls behind is disconnected and should resync (GET /v1/relay/agents, POST "
        "/v1/sync) after reconnecting. A plain GET without the upgrade answers 400.",
    ),
    _r(
        "POST",
        "/v1/maintenance",
        "runMaintenance",
        "Run renewals and expirations now",
        ADMIN,
        None,
        wire.MaintenanceResult,
        lambda s, w, m, b, k: s.admin_maintenance(w, k),
        keyed=False,
    ),
)
