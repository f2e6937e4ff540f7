"""The route handlers: one named function per endpoint, typed by what the endpoint takes.

Every handler takes the service and the caller, then keyword arguments only:
the route's path parameters by name, `key` (the Idempotency-Key) when the
route is keyed, `body` (the parsed request message) when it takes one, and
`query` when it reads query parameters. The route table reads these names and
annotations, so a handler's signature is the single statement of what its
endpoint accepts and answers (`routes.route` checks it against the path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from quota.billing.auth import Principal
from quota.billing.errors import BadRequest
from quota.billing.repo import UsageFilter
from quota.billing.service import BillingService
from quota.contract import wire

LEDGER_QUERY = ("after", "limit", "agent_id", "kind", "since", "until")
USAGE_QUERY = ("since", "until", "agent_id", "tunnel_id")
PAGE_QUERY = ("after", "limit")
_DIGITS = re.compile(r"[0-9]{1,19}", re.ASCII)
# Ids are "agt_" and 16 hex digits; the bound keeps a request line within the server's 8 KiB.
MAX_ID = 64
MAX_TUNNEL = 512  # a tunnel id in a query: the request line must stay under 8 KiB


async def get_catalogue(billing: BillingService, who: Principal) -> wire.Catalogue:
    return billing.plans.catalogue()


async def create_account(
    billing: BillingService, who: Principal, *, key: str, body: wire.CreateAccountRequest
) -> wire.AccountCreated:
    return await billing.accounts.create(who, key, body)


async def get_account(billing: BillingService, who: Principal, *, account_id: str) -> wire.Account:
    return await billing.accounts.get(who, account_id)


async def create_deposit_intent(
    billing: BillingService,
    who: Principal,
    *,
    account_id: str,
    key: str,
    body: wire.DepositIntentRequest,
) -> wire.DepositIntent:
    return await billing.accounts.deposit_intent(who, key, account_id, body)


async def deposit(
    billing: BillingService, who: Principal, *, body: wire.DepositRequest
) -> wire.DepositResult:
    return await billing.accounts.deposit(who, body)


async def correct(
    billing: BillingService,
    who: Principal,
    *,
    account_id: str,
    key: str,
    body: wire.CorrectionRequest,
) -> wire.LedgerEntry:
    return await billing.accounts.correction(who, key, account_id, body)


async def create_console_link(
    billing: BillingService, who: Principal, *, account_id: str
) -> wire.ConsoleLink:
    """A new one-time link each call (not keyed: two calls make two links)."""
    return await billing.console.create_link(who, account_id)


def _int_query(query: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    # ASCII digits only (isdigit() takes "²" and full-width digits), 2**62 has 19 of them
    if _DIGITS.fullmatch(raw) is None or int(raw) > high:
        raise BadRequest(f"{name}: must be an integer 0..{high}")
    return int(raw)


def _ledger_filters(query: Mapping[str, str]) -> dict[str, object]:
    unknown = set(query) - set(LEDGER_QUERY)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    filters: dict[str, object] = {}
    if "agent_id" in query:
        if len(query["agent_id"]) > MAX_ID:
            raise BadRequest(f"agent_id: longer than {MAX_ID} characters")
        filters["agent_id"] = query["agent_id"]
    if "kind" in query:
        if query["kind"] not in wire.KINDS:
            raise BadRequest(f"kind: {query['kind']!r} is not one of {', '.join(wire.KINDS)}")
        filters["kind"] = query["kind"]
    for bound in ("since", "until"):
        if bound in query:
            filters[bound] = _int_query(query, bound, 0, wire.MAX_INT)
    return filters


async def get_ledger(
    billing: BillingService, who: Principal, *, account_id: str, query: Mapping[str, str]
) -> wire.LedgerPage:
    filters = _ledger_filters(query)
    return await billing.accounts.ledger(
        who,
        account_id,
        after=_int_query(query, "after", 0, wire.MAX_INT),
        limit=max(1, _int_query(query, "limit", 100, 1000)),
        filters=filters,
    )


async def get_webhook_deliveries(
    billing: BillingService, who: Principal, *, account_id: str, query: Mapping[str, str]
) -> wire.WebhookDeliveryPage:
    unknown = set(query) - set(PAGE_QUERY)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    return await billing.accounts.webhook_deliveries(
        who,
        account_id,
        after=_int_query(query, "after", 0, wire.MAX_INT),
        limit=max(1, _int_query(query, "limit", 100, 1000)),
    )


async def redeliver_webhook(
    billing: BillingService, who: Principal, *, account_id: str, event_id: str
) -> wire.WebhookDelivery:
    """Not keyed: queueing a notice again twice is queueing it once."""
    return await billing.accounts.redeliver_webhook(who, account_id, event_id)


async def register_agent(
    billing: BillingService,
    who: Principal,
    *,
    account_id: str,
    key: str,
    body: wire.RegisterAgentRequest,
) -> wire.Agent:
    return await billing.agents.register(who, key, account_id, body)


async def list_agents(
    billing: BillingService, who: Principal, *, account_id: str
) -> wire.AgentList:
    return await billing.agents.of_account(who, account_id)


async def get_agent(billing: BillingService, who: Principal, *, agent_id: str) -> wire.Agent:
    return await billing.agents.get(who, agent_id)


async def update_agent_settings(
    billing: BillingService,
    who: Principal,
    *,
    agent_id: str,
    key: str,
    body: wire.AgentSettingsRequest,
) -> wire.Agent:
    return await billing.agents.update_settings(who, key, agent_id, body)


async def revoke_key(
    billing: BillingService, who: Principal, *, agent_id: str, key_id: str, key: str
) -> wire.Agent:
    return await billing.agents.revoke_key(who, key, agent_id, key_id)


async def subscribe(
    billing: BillingService,
    who: Principal,
    *,
    agent_id: str,
    key: str,
    body: wire.SubscribeRequest,
) -> wire.ChargeResult:
    return await billing.plans.subscribe(who, key, agent_id, body)


async def change_plan(
    billing: BillingService,
    who: Principal,
    *,
    agent_id: str,
    key: str,
    body: wire.ChangePlanRequest,
) -> wire.ChargeResult:
    return await billing.plans.change_plan(who, key, agent_id, body)


async def buy_package(
    billing: BillingService,
    who: Principal,
    *,
    agent_id: str,
    key: str,
    body: wire.BuyPackageRequest,
) -> wire.ChargeResult:
    return await billing.plans.buy_package(who, key, agent_id, body)


async def sync(
    billing: BillingService, who: Principal, *, body: wire.SyncRequest
) -> wire.SyncAnswer:
    return await billing.relays.sync(who, body)


async def list_relay_agents(billing: BillingService, who: Principal) -> wire.RelayAgentList:
    return await billing.relays.agents()


async def relay_events(billing: BillingService, who: Principal) -> wire.PushEvent:
    """Reached only without an upgrade: the app serves the WebSocket itself."""
    raise BadRequest("this endpoint upgrades to a WebSocket; send Upgrade: websocket")


async def run_maintenance(billing: BillingService, who: Principal) -> wire.MaintenanceResult:
    """Run maintenance now (operators, tests); not idempotent by key: it is by nature."""
    return await billing.maintenance.run()


async def get_usage(
    billing: BillingService, who: Principal, *, account_id: str, query: Mapping[str, str]
) -> wire.UsageSummary:
    unknown = set(query) - set(USAGE_QUERY)
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    for name, most in (("agent_id", MAX_ID), ("tunnel_id", MAX_TUNNEL)):
        if len(query.get(name, "")) > most:
            raise BadRequest(f"{name}: longer than {most} characters")
    return await billing.accounts.usage(
        who,
        UsageFilter(
            account_id=account_id,
            since=_int_query(query, "since", 0, wire.MAX_INT),
            until=_int_query(query, "until", wire.MAX_INT, wire.MAX_INT),
            agent_id=query.get("agent_id"),
            tunnel_id=query.get("tunnel_id"),
        ),
    )
