"""The config file and the store: validation naming keys, migrations, WAL, immutable ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from quota.billing.config import ADMIN_TOKEN_ENV, config_from_mapping, load_config
from quota.billing.errors import ConfigError, StoreError
from quota.billing.store import Store

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
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", env={})


async def test_store_migrates_once_uses_wal_and_keeps_the_ledger_immutable(
    tmp_path: Path,
) -> None:
    """Reopening keeps the schema version; ledger rows refuse UPDATE and DELETE."""
    path = tmp_path / "b.sqlite3"
    async with Store(path) as store:
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
        with pytest.raises(StoreError, match="CHECK"):
            async with store.transaction() as tx:
                await tx.run("UPDATE accounts SET balance = -1")
    async with Store(path) as store, store.reading() as tx:
        assert await tx.one("SELECT balance FROM accounts") == (5,)
        assert await tx.one("PRAGMA user_version") == (store.schema_version,)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_store_errors_do_not_leak_sqlite(tmp_path: Path) -> None:
    """An unopenable database is a StoreError, not an sqlite3 error."""
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(StoreError):
        async with Store(tmp_path / "dir.sqlite3"):
            pass


async def test_stale_version_conflicts_and_the_operation_is_retried(tmp_path: Path) -> None:
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

    async with Store(tmp_path / "b.sqlite3") as store:
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
