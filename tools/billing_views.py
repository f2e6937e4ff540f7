"""What people read from the billing API's answers: blocks and tables, one per answer.

Invariants: each function takes an answer exactly as the API sent it (what
`--json` prints) and returns text; figures go through `tools.render`, so coin,
sizes and times read as in every other command; nothing here calls the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tools.render import Column, block, column, field, table

Human = Callable[[Any], str]


def _columns(*pairs: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(column(header, key) for header, key in pairs)


_ENTRY_COLUMNS = _columns(
    ("ID", "id"),
    ("AT", "at"),
    ("KIND", "kind"),
    ("AGENT", "agent_id"),
    ("AMOUNT", "amount"),
    ("BALANCE", "balance_after"),
    ("TRAFFIC", "traffic_bytes"),
    ("USED", "used_bytes"),
    ("REASON", "reason"),
)
_AGENT_COLUMNS = _columns(
    ("AGENT", "id"),
    ("NAME", "name"),
    ("ROLE", "role"),
    ("STATUS", "status"),
    ("PLAN", "plan"),
    ("UNTIL", "active_until"),
    ("REMAINING", "traffic_remaining"),
    ("AUTO-RENEW", "auto_renew"),
    ("METERED", "allow_metered"),
)
_KEY_COLUMNS = _columns(("KEY", "id"), ("REVOKED", "revoked"), ("PUBLIC KEY", "public_key"))
_PLAN_COLUMNS = _columns(
    ("PLAN", "name"), ("KIND", "kind"), ("PRICE", "price"), ("PERIOD", "period_ms"),
    ("TRAFFIC", "traffic"),
)  # fmt: skip
_PACKAGE_COLUMNS = _columns(("PACKAGE", "name"), ("PRICE", "price"), ("TRAFFIC", "traffic"))


def entries(rows: list[dict[str, Any]]) -> str:
    return table(_ENTRY_COLUMNS, rows) if rows else "no ledger entries"


def account(p: dict[str, Any]) -> str:
    return block(p)


def account_created(p: dict[str, Any]) -> str:
    return f"{block(p['account'])}\ntoken:         {p['token']}   (shown once: keep it)"


def agent(p: dict[str, Any]) -> str:
    keys = p.get("keys") or []
    shown = block(p, skip=("keys",))
    return shown + ("\n\n" + table(_KEY_COLUMNS, keys) if keys else "\nkeys:              -")


def agents(p: dict[str, Any]) -> str:
    agents = p["agents"]
    return table(_AGENT_COLUMNS, agents) if agents else "no agents"


def catalogue(p: dict[str, Any]) -> str:
    plans = table(_PLAN_COLUMNS, p["plans"]) if p["plans"] else "no plans"
    packages = table(_PACKAGE_COLUMNS, p["packages"]) if p["packages"] else "no packages"
    metered = field("metered_price_per_gb", p["metered_price_per_gb"])
    return f"{plans}\n\n{packages}\n\nmetered traffic: {metered} coin per GB (10^9 bytes)"


def charge(p: dict[str, Any]) -> str:
    agent, account = p["agent"], p["account"]
    summary = block(
        {
            "agent": agent["id"],
            "plan": agent["plan"],
            "status": agent["status"],
            "active_until": agent["active_until"],
            "traffic_remaining": agent["traffic_remaining"],
            "balance": account["balance"],
        }
    )
    return f"{summary}\n\n{entries(p['entries'])}"


def deposit(p: dict[str, Any]) -> str:
    summary = block(
        {
            "status": p["status"],
            "payment_id": p["payment_id"],
            "amount": p["amount"],
            "account": p["account"]["id"],
            "balance": p["account"]["balance"],
            "renewed": p["renewed"],
        }
    )
    entry = p.get("entry")
    return summary + (f"\n\n{entries([entry])}" if entry else "")


def ledger(p: dict[str, Any]) -> str:
    shown = entries(p["entries"])
    cursor = p.get("next_cursor")
    return shown + (f"\n\nmore entries: add --after {cursor}" if cursor is not None else "")
