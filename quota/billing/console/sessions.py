"""Who is signed in to the web console: one-time links, sessions and CSRF tokens.

Invariants:
- A link or session token is 32 random bytes (URL-safe); the store keeps only
  its SHA-256 (`auth.token_hash`), so a copy of the database signs no one in.
- A link signs in once, within `LINK_TTL_MS` of its creation; a session lasts
  `SESSION_TTL_MS` and ends at once on sign-out (its row is deleted).
- A session acts as its account's own token would: `principal()` is an
  account principal, so every ownership check of the API applies unchanged.
- A CSRF token is derived from the secret its form is bound to (the session
  token, or before sign-in the pre-session cookie; `quota.webpages.csrf_token`).
  A page of another site can read neither cookie (HttpOnly, SameSite=Strict),
  so it cannot forge the token.
"""

from __future__ import annotations

from quota.billing import repo
from quota.billing.auth import Principal, owned_account, token_hash
from quota.billing.op import Op
from quota.billing.repo import console as rows
from quota.billing.runner import Runner
from quota.billing.store import Store
from quota.contract import wire
from quota.webpages import new_token

LINK_TTL_MS = 15 * 60_000
SESSION_TTL_MS = 12 * 3_600_000
LINK_PREFIX = "/console/link/"
_MAX_TOKEN = 100  # a token is 43 characters; longer input is refused before hashing


class ConsoleSessions:
    """Links and sessions of the web console, over the service's runner and store."""

    def __init__(self, runner: Runner, store: Store) -> None:
        self._runner = runner
        self._store = store

    async def create_link(self, who: Principal, account_id: str) -> wire.ConsoleLink:
        """A one-time link for the account (its owner or the admin may ask)."""
        token = new_token()

        async def run(op: Op) -> wire.ConsoleLink:
            await owned_account(op, who, account_id)
            expires = op.now + LINK_TTL_MS
            await rows.add_link(op.tx, token_hash(token), account_id, now=op.now, expires=expires)
            return wire.ConsoleLink(
                account_id=account_id, path=LINK_PREFIX + token, expires_at=expires
            )

        return await self._runner.run("", run)

    async def redeem_link(self, token: str) -> str | None:
        """A new session token for the link's account, or None (unknown, used or expired)."""
        if not token or len(token) > _MAX_TOKEN:
            return None

        async def run(op: Op) -> str | None:
            account_id = await rows.redeem_link(op.tx, token_hash(token), op.now)
            return None if account_id is None else await self._open(op, account_id)

        return await self._runner.run("", run)

    async def sign_in(self, account_id: str) -> str:
        """A new session token for an account whose token was checked by the caller."""

        async def run(op: Op) -> str:
            return await self._open(op, account_id)

        return await self._runner.run("", run)

    @staticmethod
    async def _open(op: Op, account_id: str) -> str:
        if await repo.get_account(op.tx, account_id) is None:
            return ""
        session = new_token()
        await rows.add_session(
            op.tx, token_hash(session), account_id, now=op.now, expires=op.now + SESSION_TTL_MS
        )
        return session

    async def principal(self, session: str) -> Principal | None:
        """The account signed in with this session token, read without a write transaction."""
        if not session or len(session) > _MAX_TOKEN:
            return None
        now = self._runner.clock.now_ms()
        async with self._store.peek() as tx:
            account_id = await rows.session_account(tx, token_hash(session), now)
        return Principal(kind="account", id=account_id) if account_id else None

    async def sign_out(self, session: str) -> None:
        async def run(op: Op) -> None:
            await rows.drop_session(op.tx, token_hash(session))

        await self._runner.run("", run)
