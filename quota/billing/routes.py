"""The route table: one entry per endpoint, shared by the app and the OpenAPI document.

Invariants:
- The app accepts exactly the `request` message of a route and answers with its
  `response` message, and the OpenAPI document is generated from these same
  entries, so the two cannot drift apart.
- `request`, `response` and `keyed` are read from the handler's signature (its
  `body` and return annotations, whether it takes `key`), and the handler's
  other keyword parameters must be exactly the path's parameters (plus `query`
  when the route lists query parameters); a table that disagrees with its
  handlers fails at import.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from quota.billing import handlers as h

Handler = Callable[..., Awaitable[Any]]

ADMIN = frozenset({"admin"})
OWNER = frozenset({"admin", "account"})
RELAY = frozenset({"relay"})
ANY = frozenset({"admin", "account", "relay"})
SYNC_MAX_BODY = 8 * 2**20  # a report of 10,000 agents' items and lease requests
LEDGER_QUERY = h.LEDGER_QUERY
USAGE_QUERY = h.USAGE_QUERY
_SPECIAL = frozenset({"key", "body", "query"})


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
    handler: Handler  # handler(service, who, **path_params, [key=], [body=], [query=])
    keyed: bool = True  # mutations need an Idempotency-Key header
    query: tuple[str, ...] = ()
    websocket: bool = False  # upgrades; `response` is the message each frame carries
    description: str = ""
    max_body: int = 256 * 1024  # bytes of request body; larger is 413


def path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def route(
    method: str,
    path: str,
    name: str,
    summary: str,
    auth: frozenset[str],
    handler: Handler,
    status: int = 200,
    **extra: Any,
) -> Route:
    """A table entry whose request, response and keying come from `handler`'s signature."""
    hints = typing.get_type_hints(handler)
    params = inspect.signature(handler).parameters
    named = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    expected = set(path_params(path)) | ({"query"} if extra.get("query") else set())
    if named - {"key", "body"} != expected:
        raise TypeError(f"{handler.__name__} takes {sorted(named)}; {method} {path} gives those")
    return Route(
        method=method,
        path=path,
        name=name,
        summary=summary,
        auth=auth,
        request=hints.get("body"),
        response=hints["return"],
        status=status,
        handler=handler,
        keyed="key" in named,
        **extra,
    )


ROUTES: tuple[Route, ...] = (
    route(
        "GET",
        "/v1/catalogue",
        "getCatalogue",
        "Plans, packages and the metered price",
        ANY,
        h.get_catalogue,
    ),
    route(
        "POST",
        "/v1/accounts",
        "createAccount",
        "Create an account; answers its token once",
        ADMIN,
        h.create_account,
        201,
    ),
    route(
        "GET",
        "/v1/accounts/{account_id}",
        "getAccount",
        "Balance, version and freeze state",
        OWNER,
        h.get_account,
    ),
    route(
        "POST",
        "/v1/accounts/{account_id}/deposit-intents",
        "createDepositIntent",
        "Announce a deposit and its expected amount (millicoins)",
        OWNER,
        h.create_deposit_intent,
        201,
    ),
    route(
        "POST",
        "/v1/deposits",
        "deposit",
        "Payment-provider webhook: credit a payment once per payment_id",
        ADMIN,
        h.deposit,
    ),
    route(
        "POST",
        "/v1/accounts/{account_id}/corrections",
        "correct",
        "Operator correction: a new ledger entry (signed amount and traffic)",
        ADMIN,
        h.correct,
        201,
    ),
    route(
        "GET",
        "/v1/accounts/{account_id}/ledger",
        "getLedger",
        "Ledger entries oldest first; page with after=next_cursor",
        OWNER,
        h.get_ledger,
        query=LEDGER_QUERY,
        description="Filters: agent_id, kind, and a time range in epoch milliseconds "
        "(since: at >= since; until: at < until). At most `limit` entries; next_cursor is "
        "null on the last page.",
    ),
    route(
        "GET",
        "/v1/accounts/{account_id}/webhooks",
        "getWebhookDeliveries",
        "Webhook notices oldest first, each with its delivery state; page with after=next_cursor",
        OWNER,
        h.get_webhook_deliveries,
        query=h.PAGE_QUERY,
        description="Every notice of the account (low_balance, account_frozen, account_unfrozen, "
        "deposit_review) as kept in the outbox: pending (next_attempt_at says when it is tried "
        "again), delivered (delivered_at), failed (given up after notifications.retries; "
        "last_error says why) or none (no webhook was configured when it was made). id is the "
        "event id the receiver gets in the body and the Quotarelay-Event-Id header.",
    ),
    route(
        "POST",
        "/v1/accounts/{account_id}/webhooks/{event_id}/redeliver",
        "redeliverWebhook",
        "Queue a failed or never sent webhook notice again, with a fresh round of retries",
        ADMIN,
        h.redeliver_webhook,
        description="A failed notice (or one made while no webhook was configured) becomes "
        "pending, due now, attempts back to 0; a pending one stays as it is; a delivered "
        "one is 409, as is any notice while notifications.webhook_url is not set. The "
        "receiver gets the same body and event id as before.",
    ),
    route(
        "GET",
        "/v1/accounts/{account_id}/usage",
        "getUsage",
        "Usage per agent and tunnel over since <= at < until, summed from every relay report",
        OWNER,
        h.get_usage,
        query=USAGE_QUERY,
    ),
    route(
        "POST",
        "/v1/accounts/{account_id}/console-links",
        "createConsoleLink",
        "A one-time sign-in link to the web console (expires in 15 minutes)",
        OWNER,
        h.create_console_link,
        201,
    ),
    route(
        "POST",
        "/v1/accounts/{account_id}/agents",
        "registerAgent",
        "Register an agent",
        OWNER,
        h.register_agent,
        201,
    ),
    route(
        "GET",
        "/v1/accounts/{account_id}/agents",
        "listAgents",
        "The account's agents",
        OWNER,
        h.list_agents,
    ),
    route("GET", "/v1/agents/{agent_id}", "getAgent", "One agent", OWNER, h.get_agent),
    route(
        "PATCH",
        "/v1/agents/{agent_id}",
        "updateAgentSettings",
        "Auto-renew, metered traffic and auto top-up settings",
        OWNER,
        h.update_agent_settings,
    ),
    route(
        "DELETE",
        "/v1/agents/{agent_id}/keys/{key_id}",
        "revokeKey",
        "Revoke an SSH key",
        OWNER,
        h.revoke_key,
    ),
    route(
        "POST",
        "/v1/agents/{agent_id}/subscription",
        "subscribe",
        "Subscribe an inactive agent to a plan",
        OWNER,
        h.subscribe,
    ),
    route(
        "POST",
        "/v1/agents/{agent_id}/plan",
        "changePlan",
        "Change plan with proration, all or nothing",
        OWNER,
        h.change_plan,
    ),
    route(
        "POST",
        "/v1/agents/{agent_id}/packages",
        "buyPackage",
        "Buy a traffic package",
        OWNER,
        h.buy_package,
    ),
    route(
        "POST",
        "/v1/sync",
        "sync",
        "Relay sync: usage, lease returns and requests, applied once per (relay, seq)",
        RELAY,
        h.sync,
        description="One transaction: a seq applied before answers its first answer with "
        "duplicate=true and changes nothing. Usage is charged (bucket, packages, metered, "
        "auto top-up, tunnel time) and added to each tunnel's totals; each agent's lease on "
        "this relay grows by at most what the agent can pay for beyond every relay's "
        "outstanding leases; every lease of the relay is extended to now + lease_ttl. "
        "granted_total is cumulative. The body may be up to 8 MiB (10,000 items and "
        "10,000 lease requests).",
        max_body=SYNC_MAX_BODY,
    ),
    route(
        "GET",
        "/v1/relay/agents",
        "listRelayAgents",
        "Every agent with its state and its SSH keys not revoked",
        RELAY,
        h.list_relay_agents,
    ),
    route(
        "GET",
        "/v1/relay/events",
        "relayEvents",
        "Push channel: a WebSocket of PushEvent messages",
        RELAY,
        h.relay_events,
        101,
        websocket=True,
        description="Upgrades to a WebSocket (Connection: Upgrade, Upgrade: websocket, "
        "with the relay token as Authorization: Bearer). The server sends JSON text "
        "messages, each a PushEvent: first {type: hello}, then {type: changed, agent_ids, "
        "reason} after every committed change a relay acts on (deposit, unfreeze, package, "
        "subscription, plan, renewal, expiry, lapse, topup, freeze, register, revoke, "
        "settings, correction). A package event to a relay whose last report asked for "
        "the agent and got less also carries that relay's new leases of it (cumulative "
        "totals, as a sync answer states them). Pings every 10 s. The relay sends nothing. "
        "A relay that "
        "falls behind is disconnected and should resync (GET /v1/relay/agents, POST "
        "/v1/sync) after reconnecting. A plain GET without the upgrade answers 400.",
    ),
    route(
        "POST",
        "/v1/maintenance",
        "runMaintenance",
        "Run renewals and expirations now",
        ADMIN,
        h.run_maintenance,
    ),
)
