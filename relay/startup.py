"""What the relay refuses to start with: secrets others can read, published or weak tokens.

Invariants:
- Checked before anything is created or bound, so a refused start leaves no
  file and no socket; every problem is reported at once in one `ConfigError`,
  each naming its key, the file and the fix.
- The files checked are those that hold a token (`RelayConfig.secret_files`:
  the token files, or the config file when a token is written in it) and the
  host key; one open to group or others is refused, as ssh refuses such a
  private key (`quota.private_files.exposed`).
- Token rules are the core's (`quota.core.tokens`): no example token, demo
  tokens only when `quotarelay up` runs the relay, and an admin token of 32+
  characters when the admin API listens on TCP beyond loopback.
"""

from __future__ import annotations

from quota.core.tokens import admin_token_problem, token_problem
from quota.private_files import exposed
from relay.config import HostPort, RelayConfig
from relay.errors import ConfigError


def check_secrets(config: RelayConfig, *, demo: bool) -> None:
    """Raise a `ConfigError` naming every problem of `config`'s secrets."""
    files = [*config.secret_files, ("relay.host_key", config.host_key)]
    problems = [exposed(path, key) for key, path in files]
    tokens = [("admin.token", config.admin_token)]
    if config.billing is not None:
        tokens.append(("billing.token", config.billing.token))
    problems += [token_problem(key, token, demo=demo) for key, token in tokens]
    if isinstance(config.admin_listen, HostPort):
        listen, token = config.admin_listen, config.admin_token
        problems.append(admin_token_problem("admin.token", listen.host, token))
    found = [p for p in problems if p is not None]
    if found:
        raise ConfigError("; ".join(found))
