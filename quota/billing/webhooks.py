"""Webhook signatures: HMAC-SHA256 over a timestamp and the exact body, as Stripe signs.

Invariants:
- The header is `Quotarelay-Signature: t=<unix seconds>,v1=<hex>`, where hex is
  HMAC-SHA256 with the endpoint's secret over `b"<t>." + body`, the body being
  the exact bytes POSTed. Each attempt is signed again with its own `t`.
- `verify` accepts a header only when one of its `v1` values matches (compared
  in constant time) and `t` lies within `tolerance_s` of the receiver's clock,
  so a captured delivery cannot be replayed once the window has passed; any
  other header fails with `SignatureError` naming why.
- Standard library only: a receiver can copy `verify` (docs/billing.md shows it).
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Quotarelay-Signature"
EVENT_HEADER = "Quotarelay-Event-Id"
SCHEME = "v1"
TOLERANCE_S = 300  # five minutes, as Stripe's libraries default to


class SignatureError(ValueError):
    """A webhook signature header is missing, malformed, wrong or outside the window."""


def signature(secret: str, body: bytes, t: int) -> str:
    """The hex HMAC-SHA256 of `t.body` under `secret`."""
    signed = str(t).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int) -> str:
    """The value of the `Quotarelay-Signature` header for `body` sent at unix time `t`."""
    return f"t={t},{SCHEME}={signature(secret, body, t)}"


def _parts(header: str) -> tuple[int, list[str]]:
    t: int | None = None
    sigs: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            t = int(value)
        elif name == SCHEME:
            sigs.append(value)
    if t is None or not sigs:
        raise SignatureError(f"malformed header: expected t=<seconds>,{SCHEME}=<hex>")
    return t, sigs


def verify(
    secret: str, body: bytes, header: str, *, now_s: int, tolerance_s: int = TOLERANCE_S
) -> int:
    """Check `header` against `body`; return its timestamp, or raise `SignatureError`."""
    t, sigs = _parts(header)
    expected = signature(secret, body, t)
    if not any(hmac.compare_digest(expected, s) for s in sigs):
        raise SignatureError("signature does not match the body")
    if abs(now_s - t) > tolerance_s:
        raise SignatureError(f"timestamp {t} is outside the {tolerance_s} s window")
    return t
