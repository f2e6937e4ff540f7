"""Two billing replicas on one PostgreSQL database behind a relay, one SIGKILLed mid-transfer."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from relay.streamlog.query import totals
from tests.e2e.test_sync import MB, Pacer, _billed, _setup, _start, _tunnel
from tests.rigs.billing import Billing, synced_relay
from tests.rigs.postgres import TestDatabase
from tests.rigs.services import DigestService
from tests.rigs.ssh import Ssh
from tests.rigs.waits import poll


async def test_the_relays_replica_sigkilled_mid_transfer_bills_every_byte_once(
    tmp_path: Path, clients: list[Ssh], postgresql_db: TestDatabase
) -> None:
    """The relay fails over to the other replica; billed equals delivered, to the byte."""
    database = postgresql_db.fresh_url()
    replicas = []
    for name in ("r1", "r2"):
        (tmp_path / name).mkdir()
        replicas.append(Billing(tmp_path / name, plan_traffic=10**9, database=database))
    one, two = replicas
    relay = None
    try:
        for replica in replicas:
            await replica.start()
        account, client, support = await _setup(tmp_path, one)
        relay = synced_relay(tmp_path, one, urls=[two.url])  # leases of 1 MB: many asks
        await _start(relay, client, support)
        async with DigestService(half_close=False) as service:
            port = await _tunnel(relay, client, support, service, clients)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            pacer = Pacer(writer)
            task = asyncio.create_task(pacer.run())
            await poll(lambda: bool(service.conns) and service.conns[0].received > MB, "traffic")
            await one.stop(signal.SIGKILL)
            await poll(lambda: service.conns[0].received > 4 * MB, "traffic on leases of r2", 60)
            pacer.stop.set()
            await task
            writer.write_eof()
            await asyncio.wait_for(service.conns[0].eof.wait(), 30)
            conn = service.conns[0]
            assert (conn.received, conn.digest.hexdigest()) == (
                pacer.sent,
                pacer.digest.hexdigest(),
            )
            writer.close()
        await poll(lambda: _billed(two, account, client, pacer.sent), "billing to catch up", 30)
        db_path = relay.db_path

        async def logged() -> bool:  # the stream's closing record may follow its EOF
            return [r["bytes_total"] for r in await totals(db_path, by="agent")] == [pacer.sent]

        await poll(logged, "the stream log to agree with billing")
        ledger = await two.api("GET", f"/v1/accounts/{account}/ledger?limit=1000")
        balance = (await two.api("GET", f"/v1/accounts/{account}"))["balance"]
        assert balance == sum(e["amount"] for e in ledger["entries"])  # the ledger explains it
    finally:
        if relay is not None:
            await relay.stop()
        for replica in replicas:
            await replica.close()


async def test_three_relays_two_replicas_one_sigkilled_bill_every_byte_once(
    tmp_path: Path, clients: list[Ssh], postgresql_db: TestDatabase
) -> None:
    """Three relays, each with its own first replica, carry one agent's traffic; the replica
    two of them use first is SIGKILLed mid-transfer: billed equals delivered across all three,
    each relay's stream log agrees with its share, and the ledger explains the balance."""
    database = postgresql_db.fresh_url()
    replicas = []
    for name in ("b1", "b2"):
        (tmp_path / name).mkdir()
        replicas.append(Billing(tmp_path / name, plan_traffic=10**9, database=database))
    one, two = replicas
    relays = []
    pacers: list[Pacer] = []
    tasks: list[asyncio.Task[None]] = []
    services: list[DigestService] = []
    try:
        for replica in replicas:
            await replica.start()
        account, client, support = await _setup(tmp_path, one)
        for n, (first, then) in enumerate(((one, two), (two, one), (one, two)), start=1):
            folder = tmp_path / f"relay{n}"
            folder.mkdir()
            relay = synced_relay(folder, first, relay=n, urls=[then.url])
            relays.append(relay)
            await _start(relay, client, support)
            service = await DigestService(half_close=False).__aenter__()
            services.append(service)
            port = await _tunnel(relay, client, support, service, clients)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            pacers.append(Pacer(writer))
            tasks.append(asyncio.create_task(pacers[-1].run()))
        await poll(
            lambda: all(s.conns and s.conns[0].received > MB for s in services), "traffic", 60
        )
        await one.stop(signal.SIGKILL)
        seen = {id(s): s.conns[0].received for s in services}
        await poll(
            lambda: all(s.conns[0].received > seen[id(s)] + 2 * MB for s in services),
            "traffic on every relay after the replica's death",
            60,
        )
        for pacer, task in zip(pacers, tasks, strict=True):
            pacer.stop.set()
            await task
            pacer.writer.write_eof()
        for service, pacer in zip(services, pacers, strict=True):
            await asyncio.wait_for(service.conns[0].eof.wait(), 30)
            conn = service.conns[0]
            assert (conn.received, conn.digest.hexdigest()) == (
                pacer.sent,
                pacer.digest.hexdigest(),
            )
            pacer.writer.close()
        delivered = sum(p.sent for p in pacers)
        await poll(lambda: _billed(two, account, client, delivered), "billing to catch up", 30)
        for relay, pacer in zip(relays, pacers, strict=True):
            db_path = relay.db_path

            async def logged(db_path: Path = db_path, sent: int = pacer.sent) -> bool:
                return [r["bytes_total"] for r in await totals(db_path, by="agent")] == [sent]

            await poll(logged, "each relay's stream log to agree with what it carried")
        ledger = await two.api("GET", f"/v1/accounts/{account}/ledger?limit=1000")
        balance = (await two.api("GET", f"/v1/accounts/{account}"))["balance"]
        assert balance == sum(e["amount"] for e in ledger["entries"])  # the ledger explains it
    finally:
        for service in services:
            await service.__aexit__(None, None, None)
        for relay in relays:
            await relay.stop()
        for replica in replicas:
            await replica.close()
