"""The config file and the store: validation naming keys, migrations, WAL, immutable ledger."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from quota.billing.config import ADMIN_TOKEN_ENV, config_from_mapping, load_config
from quota.billing.errors import ConfigError, StoreError
from quota.billing.store import SqliteStore, Store, open_store, schema
from tests.rigs.postgres import TestDatabase

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-long-enough-admin-token"


def test_example_config_loads_with_exact_prices() -> None:
    """examples/billing.toml is valid; prices are millicoins, sizes bytes."""
    config = load_config(ROOT / "examples" / "billing.toml", env={})
    assert config.metered_price_per_gb == 100
    assert config.catalogue.plan("pro").price == 19_000
    assert config.catalogue.plan("payg").price == 2_100
    assert config.catalogue.package("10G").traffic == 10 * 10**9
    assert config.maintenance_interval_ms == 300_000


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"server": {"admin_token": TOKEN, "port": 70000}}, "server.port"),
        ({"server": {"admin_token": "short"}}, "server.admin_token"),
        ({"server": {"admin_token": TOKEN, "colour": 1}}, "server.colour"),
        ({"server": {"admin_token": TOKEN}, "extra": {}}, "extra"),
        (
            {"server": {"admin_token": TOKEN}, "pricing": {"metered_price_per_gb": 0.1}},
            "pricing.metered_price_per_gb",
        ),
        (
            {"server": {"admin_token": TOKEN, "maintenance_interval": "0s"}},
            "server.maintenance_interval",
        ),
        (
            {"server": {"admin_token": TOKEN}, "notifications": {"webhook_url": "ftp://x"}},
            "notifications.webhook_url",
        ),
        (
            {"server": {"admin_token": TOKEN}, "relays": [{"id": "r", "token": "x"}]},
            "relays[0].token",
        ),
        (
            {"server": {"admin_token": TOKEN}, "plans": [{"name": "p", "price": "1"}]},
            "plans[0].period",
        ),
        ({"server": {"admin_token": TOKEN, "port": True}}, "server.port"),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    """Each invalid value is refused with its key at the start of the message."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw, {})
    assert str(info.value).startswith(key)


def test_every_bad_key_is_reported_at_once() -> None:
    """Several mistakes give one error naming each key, in file order, then joined rules."""
    raw = {
        "server": {"admin_token": "short", "port": 70000, "lease_ttl": "soon"},
        "notifications": {"retries": 101},
        "relays": [{"id": "", "token": TOKEN}],
    }
    with pytest.raises(ConfigError) as info:
        config_from_mapping(raw, {})
    assert [p.split(": ")[0] for p in str(info.value).split("; ")] == [
        "server.port",
        "server.lease_ttl",
        "notifications.retries",
        "relays[0].id",
        "server.admin_token",
    ]


def test_admin_token_comes_from_the_environment(tmp_path: Path) -> None:
    """The environment's admin token wins over the file's; bad TOML is a ConfigError."""
    config = config_from_mapping({}, {ADMIN_TOKEN_ENV: TOKEN})
    assert config.admin_token == TOKEN
    assert ADMIN_TOKEN_ENV == "QUOTARELAY_BILLING_SERVER_ADMIN_TOKEN"
    cli = {"QUOTARELAY_BILLING_URL": "http://x:1", "QUOTARELAY_BILLING_TOKEN": "t" * 20}
    env = {**cli, "QUOTARELAY_BILLING_SERVER_PORT": "9001", "QUOTARELAY_RELAY_SERVER_PORT": "1"}
    config = config_from_mapping({"server": {"admin_token": TOKEN}}, env)
    assert (config.port, config.env_keys) == (9001, ("QUOTARELAY_BILLING_SERVER_PORT",))
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


async def _schema_version(store: Store) -> int:
    sql = {"sqlite": "PRAGMA user_version", "postgresql": "SELECT MAX(version) FROM schema_version"}
    async with store.reading() as tx:
        row = await tx.one(sql[store.kind])
    assert row is not None
    return int(row[0])


async def test_store_migrates_once_and_keeps_the_ledger_immutable(database: str) -> None:
    """Reopening keeps the rows and the schema version; ledger rows refuse UPDATE and DELETE."""
    async with open_store(database) as store:
        async with store.transaction() as tx:
            await tx.run(
                "INSERT INTO accounts (id, name, token_hash, balance, version,"
                " created_at) VALUES ('a', 'n', 'h', 5, 0, 0)"
            )
            await tx.run(
                "INSERT INTO ledger (account_id, kind, amount, balance_after,"
                " traffic_bytes, used_bytes, idempotency_key, reason, at)"
                " VALUES ('a', 'deposit', 5, 5, 0, 0, 'k', 'r', 0)"
            )
        for sql in ("UPDATE ledger SET amount = 6", "DELETE FROM ledger"):
            with pytest.raises(StoreError, match="immutable"):
                async with store.transaction() as tx:
                    await tx.run(sql)
        with pytest.raises(StoreError, match=r"(?i)check constraint"):
            async with store.transaction() as tx:
                await tx.run("UPDATE accounts SET balance = -1")
    async with open_store(database) as store:
        async with store.reading() as tx:
            assert await tx.one("SELECT balance FROM accounts") == (5,)
        assert await _schema_version(store) == store.schema_version


async def test_postgresql_refuses_truncating_the_ledger(postgresql_db: TestDatabase) -> None:
    """TRUNCATE, which skips row triggers, is refused on the ledger too."""
    async with open_store(postgresql_db.fresh_url()) as store:
        with pytest.raises(StoreError, match="immutable"):
            async with store.transaction() as tx:
                await tx.run("TRUNCATE ledger")


async def test_sqlite_store_uses_wal(tmp_path: Path) -> None:
    """The SQLite file is in WAL mode, so readers never wait for the writer."""
    path = tmp_path / "b.sqlite3"
    async with SqliteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_both_schemas_have_every_migration() -> None:
    """Each schema change is written for both databases: the lists are equally long."""
    assert len(schema.SQLITE) == len(schema.POSTGRESQL)


async def test_store_errors_do_not_leak_sqlite(tmp_path: Path) -> None:
    """An unopenable database is a StoreError, not an sqlite3 error."""
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError):
        async with SqliteStore(tmp_path / "dir.sqlite3"):
            pass


async def test_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    """A PostgreSQL that does not answer is a StoreError naming the URL, its password hidden."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the store tries it
    url = f"postgresql://u:s3cret@127.0.0.1:{port}/db"
    with pytest.raises(StoreError, match="cannot open") as info:
        async with open_store(url):
            pass
    assert "s3cret" not in str(info.value) and f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("var/b.sqlite3", Path),
        ("postgresql://postgres@127.0.0.1:5432/billing", str),
        ("postgres://u:p@db.example:5432/billing?sslmode=require", str),
    ],
)
def test_database_is_a_sqlite_path_or_a_postgresql_url(value: str, kind: type) -> None:
    """A URL is kept as written (a path would fold its //); anything else is a SQLite path."""
    config = config_from_mapping({"server": {"admin_token": TOKEN, "database": value}}, {})
    assert isinstance(config.database, kind) and str(config.database) == value


@pytest.mark.parametrize("value", ["", "mysql://h/db", "postgresql://127.0.0.1:5432"])
def test_database_errors_name_the_key(value: str) -> None:
    """An empty value, another scheme or a URL without a database is refused, naming the key."""
    with pytest.raises(ConfigError, match=r"^server\.database: "):
        config_from_mapping({"server": {"admin_token": TOKEN, "database": value}}, {})


async def test_stale_version_conflicts_and_the_operation_is_retried(
    tmp_path: Path, database: str
) -> None:
    """A write with a stale balance version raises VersionConflict; the service runs it again."""
    import dataclasses

    from quota.billing import repo
    from quota.billing.auth import Principal
    from quota.billing.clock import ManualClock
    from quota.billing.errors import VersionConflict
    from quota.billing.op import Op
    from quota.billing.service import BillingService
    from quota.contract import wire
    from tests.billing.api import make_config

    async with open_store(database) as store:
        svc = BillingService(store, make_config(tmp_path), ManualClock())
        created = await svc.accounts.create(
            Principal(kind="admin"), "k", wire.CreateAccountRequest(name="n")
        )
        acc = created.account.id
        attempts = 0

        async def racy(op: Op) -> int:
            nonlocal attempts
            attempts += 1
            row = await repo.get_account(op.tx, acc)
            assert row is not None
            if attempts == 1:  # someone else wrote in between: our version is stale
                await repo.save_account(op.tx, row, dataclasses.replace(row, balance=7))
            await repo.save_account(op.tx, row, dataclasses.replace(row, balance=5))
            return attempts

        assert await svc.runner.run("k", racy) == 2
        with pytest.raises(VersionConflict):
            async with store.transaction() as tx:
                row = await repo.get_account(tx, acc)
                assert row is not None
                await repo.save_account(tx, dataclasses.replace(row, version=0), row)
        balance = (await svc.accounts.audit(acc)).balance
        assert balance == 5 and row.version == 1


_ACCOUNT = (
    "INSERT INTO accounts (id, name, token_hash, balance, version, created_at)"
    " VALUES (?, 'n', ?, ?, 0, 0)"
)


async def test_held_writes_are_seen_by_the_next_read_and_committed(database: str) -> None:
    """Writes held with `later` reach the database before the next read and before commit."""
    async with open_store(database) as store:
        async with store.transaction() as tx:
            for n in range(3):
                tx.later(_ACCOUNT, (f"a{n}", f"h{n}", n))
            assert await tx.one("SELECT COUNT(*) FROM accounts") == (3,)
            tx.later("UPDATE accounts SET balance = balance + 10 WHERE id = ?", ("a2",))
            tx.later(_ACCOUNT, ("a3", "h3", 3))  # held last, committed with the rest
        async with store.reading() as tx:
            rows = await tx.all("SELECT id, balance FROM accounts ORDER BY id")
    assert rows == [("a0", 0), ("a1", 1), ("a2", 12), ("a3", 3)]


async def test_a_held_write_that_fails_rolls_the_transaction_back(database: str) -> None:
    """A held write refused at commit (a CHECK) fails the transaction: nothing of it stays."""
    async with open_store(database) as store:
        with pytest.raises(StoreError, match=r"(?i)check constraint"):
            async with store.transaction() as tx:
                await tx.run(_ACCOUNT, ("a0", "h0", 5))
                tx.later(_ACCOUNT, ("a1", "h1", -1))
        async with store.reading() as tx:
            assert await tx.one("SELECT COUNT(*) FROM accounts") == (0,)
