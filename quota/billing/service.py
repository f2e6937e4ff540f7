"""The billing service, assembled from parts that each do one job.

Invariants:
- Every part runs its operations through the one `Runner` (one transaction
  each, retried on conflict, idempotent where keyed, announced after commit),
  so the rules of `runner` hold for all of them.
- The parts share nothing else but the config: accounts and money in
  (`accounts`), agents and keys (`agents`), purchases and the catalogue
  (`plans`), relay sync and leases (`relays`), renewals (`maintenance`),
  tokens (`tokens`), the web console's links and sessions (`console`);
  notices and push events leave through `push` and the notifier after commit.
- `auth_failures` counts unknown tokens per source address in memory (never in
  the database); the HTTP shell answers 429 to a source past the limit.
"""

from __future__ import annotations

from collections.abc import Callable

from quota.billing.accounts import Accounts
from quota.billing.agents import Agents
from quota.billing.auth import Tokens
from quota.billing.clock import Clock
from quota.billing.config import BillingConfig
from quota.billing.console.sessions import ConsoleSessions
from quota.billing.maintenance import Maintenance
from quota.billing.op import Notice
from quota.billing.plans import Plans
from quota.billing.push import PushHub
from quota.billing.relays import Relays
from quota.billing.runner import Announcer, Runner
from quota.billing.store import Store
from quota.billing.waiting import Waiting
from quota.core.authfail import AuthFailures

AUTH_SOURCES = 10_000  # addresses whose unknown tokens are counted, at most (docs/security.md)


def _no_notices(_: Notice) -> None:
    pass


class BillingService:
    """The whole billing API as plain async methods of its parts (the HTTP app is a thin shell)."""

    def __init__(
        self,
        store: Store,
        config: BillingConfig,
        clock: Clock,
        notify: Callable[[Notice], None] = _no_notices,
    ) -> None:
        self.config = config
        self.store = store
        self.push = PushHub()
        self.runner = Runner(store, config, clock, Announcer(notify, self.push))
        self.tokens = Tokens(store, config)
        self.auth_failures = AuthFailures(
            limit=config.auth_failures, window_ms=config.auth_window_ms, max_sources=AUTH_SOURCES
        )
        self.accounts = Accounts(self.runner)
        self.agents = Agents(self.runner, config)
        self.waiting = Waiting()  # relays waiting for bytes: a purchase pushes them a lease
        self.plans = Plans(self.runner, config, self.waiting)
        self.relays = Relays(self.runner, self.waiting)
        self.maintenance = Maintenance(self.runner)
        self.console = ConsoleSessions(self.runner, store)  # the web console's links, sessions
