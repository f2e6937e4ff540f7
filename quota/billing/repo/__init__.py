"""The repository: every SQL statement of the billing API lives in this package or the store.

One module per aggregate: `accounts` (balances, version checks, notices),
`agents` (agents and keys), `ledger` (immutable entries, `post`), `records`
(answers kept for idempotency: keys, payments, relay reports, intents),
`leases` (each relay's share of an agent's traffic), `usage` (the raw usage
of every report, and per-tunnel totals summed from it), `rollup` (an agent's open window
of traffic draws, one ledger entry when it closes) and `webhooks` (the
notices' delivery outbox, called as `repo.webhooks.*`). Each function runs in
the caller's transaction (`Tx`) and speaks in typed rows, never in SQL rows.
Callers use the names re-exported here.
"""

from quota.billing.repo import webhooks
from quota.billing.repo.accounts import (
    AccountRow,
    account_id_by_token,
    accounts_by_id,
    add_notice,
    all_accounts,
    create_account,
    get_account,
    save_account,
    save_balances,
)
from quota.billing.repo.agents import (
    AgentBrief,
    AgentRow,
    AgentTuple,
    Traffic,
    add_key,
    agent_ids_of,
    agent_name_taken,
    agent_wire,
    agents_by_id,
    agents_of,
    agents_of_accounts,
    agents_with_leases,
    all_agent_briefs,
    due_agents,
    get_agent,
    insert_agent,
    keys_of,
    live_keys,
    revoke_key,
    save_agent,
    save_traffic,
)
from quota.billing.repo.leases import (
    expire_relay,
    extend_relay,
    outstanding,
    outstanding_of,
    save_lease_totals,
)
from quota.billing.repo.ledger import Posting, counts_by_kind, ledger_page, post, sums
from quota.billing.repo.records import (
    Answered,
    Payment,
    Report,
    add_intent,
    find_answer,
    find_payment,
    find_report,
    intent_amount,
    save_answer,
    save_payment,
    save_report,
)
from quota.billing.repo.rollup import close_due, window
from quota.billing.repo.usage import (
    Delta,
    TunnelUsage,
    UsageFilter,
    log_usage,
    tunnel_usage_of,
    usage_between,
)
from quota.billing.repo.webhooks import Outgoing

__all__ = [
    "AccountRow",
    "AgentBrief",
    "AgentRow",
    "AgentTuple",
    "Answered",
    "Delta",
    "Outgoing",
    "Payment",
    "Posting",
    "Report",
    "Traffic",
    "TunnelUsage",
    "UsageFilter",
    "account_id_by_token",
    "accounts_by_id",
    "add_intent",
    "add_key",
    "add_notice",
    "agent_ids_of",
    "agent_name_taken",
    "agent_wire",
    "agents_by_id",
    "agents_of",
    "agents_of_accounts",
    "agents_with_leases",
    "all_accounts",
    "all_agent_briefs",
    "close_due",
    "counts_by_kind",
    "create_account",
    "due_agents",
    "expire_relay",
    "extend_relay",
    "find_answer",
    "find_payment",
    "find_report",
    "get_account",
    "get_agent",
    "insert_agent",
    "intent_amount",
    "keys_of",
    "ledger_page",
    "live_keys",
    "log_usage",
    "outstanding",
    "outstanding_of",
    "post",
    "revoke_key",
    "save_account",
    "save_agent",
    "save_answer",
    "save_balances",
    "save_lease_totals",
    "save_payment",
    "save_report",
    "save_traffic",
    "sums",
    "tunnel_usage_of",
    "usage_between",
    "webhooks",
    "window",
]
