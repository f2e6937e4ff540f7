"""One exception root for quota.billing, each error carrying its HTTP status.

Invariants: aiosqlite, asyncpg and aiohttp errors never leave their adapter module; they
are translated (`raise ... from`) into `StoreError` or `NotifyError`. Errors a
client caused are `ClientError`s with a 4xx status and a message that names
the problem; "not enough coin" is a 409/402 outcome answer, not a crash.
A 400 means the request breaks the OpenAPI document; a request the document
allows is never answered 400 (422 when it names an unknown plan or package,
409 when the state forbids it).
"""

from __future__ import annotations


class BillingError(Exception):
    """Root of every error raised by quota.billing."""

    status = 500


class ConfigError(BillingError, ValueError):
    """The billing config is invalid; the message names the key."""


class StoreError(BillingError, OSError):
    """The database failed (disk, locking, corruption)."""


class VersionConflict(BillingError):
    """A balance changed between read and write; the operation is retried."""

    status = 409


class NotifyError(BillingError, OSError):
    """A webhook delivery failed."""


class ClientError(BillingError):
    """The request is wrong; answered with `status` and the message."""

    status = 400


class BadRequest(ClientError):
    status = 400


class Unauthorized(ClientError):
    status = 401


class Forbidden(ClientError):
    status = 403


class NotFound(ClientError):
    status = 404


class Unprocessable(ClientError):
    """The request matches its schema but names what does not exist or does not apply."""

    status = 422


class Conflict(ClientError):
    status = 409


class KeyReused(Conflict):
    """An idempotency key (or a relay's seq) was used before for another request."""


class Replayed(ClientError):
    """The refusal first answered under an idempotency key, answered again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LimitExceeded(Conflict):
    """A balance or a counter would pass its documented maximum; nothing changed."""


class TooManyRequests(ClientError):
    """Too many authentication failures from one source; answered with Retry-After."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PaymentRequired(ClientError):
    """The balance cannot cover the charge; nothing changed."""

    status = 402


class ListenError(BillingError, OSError):
    """The HTTP server could not listen on its address."""
