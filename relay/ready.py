"""The `relay_ready` line: printed once on stdout when the relay listens, and logged.

Its `admin` field is the admin API's address as `--admin` takes it
(`127.0.0.1:8022`, or `unix:PATH` for a unix socket), so a script can pass it on
as it is; `ssh_port` and `metrics` (null when off) are ports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from relay.config import RelayConfig

log = structlog.get_logger("relay")


def admin_address(config: RelayConfig, admin_port: int | None) -> str:
    """Where the admin API listens, written as `quotarelay relay ... --admin` takes it."""
    listen = config.admin_listen
    if isinstance(listen, Path) or admin_port is None:  # None: listening on a unix socket
        return f"unix:{listen}"
    return f"{listen.host}:{admin_port}"


def announce(
    config: RelayConfig,
    *,
    ssh_port: int,
    admin_port: int | None,
    metrics_port: int | None,
    line: dict[str, Any] | None = None,
    **log_only: Any,
) -> None:
    """Print the ready line (with `line`'s extra fields) and log it (with `log_only` too)."""
    ready = {
        "event": "relay_ready",
        "relay_id": config.relay_id,
        "ssh_port": ssh_port,
        "admin": admin_address(config, admin_port),
        "metrics": metrics_port,
        **(line or {}),
    }
    print(json.dumps(ready), flush=True)
    log.info("relay_ready", **{k: v for k, v in ready.items() if k != "event"}, **log_only)
