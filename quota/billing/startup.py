"""What the billing API refuses to start with: secrets others can read, published or weak tokens.

Invariants:
- Checked before the database is opened, so a refused start creates nothing;
  every problem is reported at once in one `ConfigError`, each naming its key
  or file and the fix.
- The config file holds the relays' tokens (and the admin token and webhook
  secret unless they come from the environment); the database keeps account tokens in idempotent
  answers. Either one open to group or others is refused, as ssh refuses such a
  private key (`quota.private_files.exposed`); a PostgreSQL database is the
  server's to guard.
- Token rules are the core's (`quota.core.tokens`): no example token, demo
  tokens only when `quotarelay up` runs the service, and an admin token of 32+
  characters when the API listens beyond loopback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from quota.billing.config import ADMIN_TOKEN_ENV, WEBHOOK_SECRET_ENV, BillingConfig
from quota.billing.errors import ConfigError
from quota.core.tokens import admin_token_problem, token_problem
from quota.private_files import exposed


def check_secrets(
    config: BillingConfig, source: Path | None, *, demo: bool, env: Mapping[str, str]
) -> None:
    """Raise a `ConfigError` naming every problem; `source` is the config file read."""
    problems = [
        token_problem("server.admin_token", config.admin_token, demo=demo),
        admin_token_problem("server.admin_token", config.host, config.admin_token),
        *(
            token_problem(f"relays[{i}].token", r.token, demo=demo)
            for i, r in enumerate(config.relays)
        ),
    ]
    if config.webhook_url:
        problems.append(
            token_problem("notifications.webhook_secret", config.webhook_secret, demo=demo)
        )
    if isinstance(config.database, Path):  # a SQLite file; PostgreSQL guards its own files
        problems.append(exposed(config.database, "server.database"))
    secret_in_file = bool(config.webhook_url) and not env.get(WEBHOOK_SECRET_ENV)
    if source is not None and (config.relays or secret_in_file or not env.get(ADMIN_TOKEN_ENV)):
        problems.append(exposed(source, "config file"))
    found = [p for p in problems if p is not None]
    if found:
        raise ConfigError("; ".join(found))
