"""The SSH front's host key and asyncssh options, for one process and for each worker.

Invariants: the host key is made on first start (ed25519, mode 0600, in a
private folder) and kept; a key that cannot be made or read stops the relay
with a `ConfigError` naming `relay.host_key`. A worker imports this, not
`relay.app`, so it starts without the admin API, the quota agent and aiohttp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import structlog

from quota.private_files import create_private, private_folder
from relay.config import RelayConfig
from relay.errors import ConfigError

log = structlog.get_logger("relay")


def load_host_key(path: Path) -> Any:
    """Read the relay's host key, making a new one on first start."""
    if not path.exists():
        try:
            private_folder(path.parent)
            create_private(path, asyncssh.generate_private_key("ssh-ed25519").export_private_key())
        except OSError as exc:
            raise ConfigError(f"relay.host_key: cannot create {path}: {exc.strerror}") from None
        log.info("host_key_created", path=str(path))
    try:
        return asyncssh.read_private_key(str(path))
    except (asyncssh.KeyImportError, OSError) as exc:
        raise ConfigError(f"relay.host_key: cannot read {path}: {exc}") from None


def _login_backstop_s(config: RelayConfig) -> float:
    """asyncssh's own login timeout: a backstop a little after the gate's grace (0: none)."""
    grace = config.gate.login_grace_ms
    return (grace + 5_000) / 1000 if grace else 0


def front_options(config: RelayConfig, host_key: Any) -> dict[str, Any]:
    """asyncssh's options for the SSH front, listening or on connections passed to a worker."""
    return {
        "server_host_keys": [host_key],
        "keepalive_interval": config.keepalive_ms / 1000,
        "encryption_algs": list(config.ciphers),
        "agent_forwarding": False,
        "x11_forwarding": False,
        "allow_scp": False,
        "login_timeout": _login_backstop_s(config),
    }
