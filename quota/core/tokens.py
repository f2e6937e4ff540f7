"""What makes a configured token unfit to start a service with.

Invariants:
- Pure: a token, the config key it came from and where the service listens go
  in; a problem text starting with that key comes out, or None. Nothing is
  logged, and the token itself never appears in a problem text.
- A token from the published example config (`EXAMPLE_PREFIX`) is refused
  everywhere: everyone who read the example knows it.
- A demo token (`DEMO_PREFIX`, written by `quotarelay up`) is accepted only
  when the caller says it runs the demo.
- An admin API reachable beyond loopback needs a token of at least
  `MIN_EXPOSED_ADMIN_TOKEN` characters; on loopback the services' own minimum
  applies.
"""

from __future__ import annotations

import ipaddress

DEMO_PREFIX = "quotarelay-demo-"
EXAMPLE_PREFIX = "change-me-"
MIN_EXPOSED_ADMIN_TOKEN = 32


def token_problem(key: str, token: str, *, demo: bool) -> str | None:
    """Why `token` (from config `key`) must not be used, or None."""
    if token.startswith(EXAMPLE_PREFIX):
        return f"{key}: the example config's token is published; set a secret one of your own"
    if token.startswith(DEMO_PREFIX) and not demo:
        return (
            f"{key}: a demo token ({DEMO_PREFIX}...) is accepted by `quotarelay up` only;"
            " set a secret one of your own"
        )
    return None


def is_loopback(host: str) -> bool:
    """True when `host` is "localhost" or a loopback address; "" and 0.0.0.0 are every address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def admin_token_problem(key: str, host: str, token: str) -> str | None:
    """Why `token` is too weak for an admin API listening on `host`, or None."""
    if is_loopback(host) or len(token) >= MIN_EXPOSED_ADMIN_TOKEN:
        return None
    return (
        f"{key}: an admin API on {host or 'every address'} (not loopback) needs a token of"
        f" {MIN_EXPOSED_ADMIN_TOKEN}+ characters, got {len(token)}"
    )
