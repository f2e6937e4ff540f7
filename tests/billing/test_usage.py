"""Usage over a time range (API and CLI), the hourly traffic roll-up, set-based ingestion."""

from __future__ import annotations

import json
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quota.billing import repo
from quota.billing.clock import ManualClock
from quota.billing.config import config_from_mapping
from quota.billing.errors import ConfigError, StoreError
from quota.billing.server import BillingServer
from quota.billing.store import SqliteStore, Tx
from quota.billing.store.schema import SQLITE
from tests.billing.api import ADMIN, RELAY, RELAY2, Api, make_config
from tools.cli import CliError, build_parser

HOUR = 3_600_000
M = 10**6
G = 10**9


async def _paying(api: Api, name: str = "nas", plan: str = "pro") -> tuple[str, str, str]:
    """An account with coin and one client agent on `plan`: (account, token, agent)."""
    acc, token = await api.account()
    await api.deposit(acc, 100_000, f"pay-{acc}")
    agent = await api.agent(acc, token, name)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": plan})
    return acc, token, agent["id"]


async def _sync(api: Api, seq: int, items: list[dict[str, Any]], leases: Any = ()) -> Any:
    body = {"seq": seq, "items": items, "leases": list(leases)}
    return await api.ok("POST", "/v1/sync", RELAY, body)


async def _traffic_entries(api: Api, acc: str) -> list[tuple[int, int]]:
    page = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"kind": "traffic"})
    return [(e["used_bytes"], e["at"]) for e in page["entries"]]


async def _audit_holds(server: BillingServer, acc: str) -> None:
    audit = await server.service.accounts.audit(acc)
    assert audit.balance == audit.ledger_total
    for agent_id, remaining in audit.traffic.items():
        assert remaining == audit.ledger_traffic.get(agent_id, 0), agent_id


async def test_usage_per_agent_and_tunnel_over_a_time_range(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """One call sums the raw reports per agent and tunnel within since <= at < until."""
    acc, token, nas = await _paying(api, "nas")
    web = (await api.agent(acc, token, "web"))["id"]
    await api.ok("POST", f"/v1/agents/{web}/subscription", token, {"plan": "basic"})
    other_acc, other_token, other = await _paying(api, "elsewhere")
    t0 = clock.now_ms()
    await _sync(
        api,
        1,
        [
            {"agent_id": nas, "tunnel_id": "t-ssh", "bytes": 3 * M, "tunnel_seconds": 5},
            {"agent_id": nas, "tunnel_id": "t-ssh", "bytes": M},
            {"agent_id": web, "tunnel_id": "t-http", "bytes": 7 * M},
            {"agent_id": other, "tunnel_id": "t-ssh", "bytes": 9 * M},
        ],
    )
    clock.advance(10 * 60_000)
    t1 = clock.now_ms()
    await _sync(api, 2, [{"agent_id": nas, "tunnel_id": "t-ssh", "bytes": 2 * M}])
    await _sync(api, 3, [{"agent_id": nas, "tunnel_id": "t-rdp", "bytes": 5}])
    path = f"/v1/accounts/{acc}/usage"
    whole = await api.ok("GET", path, token)
    assert whole["bytes"] == 13 * M + 5 and whole["tunnel_seconds"] == 5
    tunnels = {(t["agent_id"], t["tunnel_id"]): t for t in whole["tunnels"]}
    assert set(tunnels) == {(nas, "t-ssh"), (nas, "t-rdp"), (web, "t-http")}
    ssh = tunnels[(nas, "t-ssh")]
    assert (ssh["bytes"], ssh["reports"], ssh["first_at"], ssh["last_at"]) == (6 * M, 2, t0, t1)
    assert {a["agent_id"]: a["bytes"] for a in whole["agents"]} == {nas: 6 * M + 5, web: 7 * M}
    first = await api.ok("GET", path, token, params={"until": str(t1)})
    assert first["bytes"] == 11 * M
    later = await api.ok("GET", path, params={"since": str(t1), "agent_id": nas})
    assert [(t["tunnel_id"], t["bytes"]) for t in later["tunnels"]] == [
        ("t-rdp", 5),
        ("t-ssh", 2 * M),
    ]
    one = await api.ok("GET", path, params={"tunnel_id": "t-http"})
    assert one["bytes"] == 7 * M and one["agents"] == [
        {"agent_id": web, "bytes": 7 * M, "tunnel_seconds": 0}
    ]
    assert (await api.ok("GET", f"/v1/accounts/{other_acc}/usage", other_token))["bytes"] == 9 * M
    for params in ({"tunnel_id": "t\x00ssh"}, {"agent_id": nas + "\x00"}):  # matches nothing
        assert (await api.ok("GET", path, params=params))["tunnels"] == []
    status, _ = await api.call("GET", path, other_token)
    assert status == 404  # another account's usage is not found
    for params in ({"since": "-1"}, {"until": "1e3"}, {"agent": nas}, {"agent_id": "x" * 65}):
        status, answer = await api.call("GET", path, params=params)
        assert status == 400, (params, answer)


async def test_traffic_is_one_ledger_entry_per_agent_per_hour(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Draws of an hour become one entry when it closes; the invariants hold all along."""
    clock.advance(HOUR - clock.now_ms() % HOUR)  # on the hour
    acc, _, agt = await _paying(api)
    for seq in range(1, 7):  # six reports, ten minutes apart: one hour
        await _sync(api, seq, [{"agent_id": agt, "tunnel_id": "t", "bytes": seq * M}])
        await _audit_holds(server, acc)
        clock.advance(10 * 60_000)
    assert await _traffic_entries(api, acc) == []  # the hour is still open (ends now)
    agent = await api.ok("GET", f"/v1/agents/{agt}")
    assert agent["traffic_remaining"] == 10 * G - 21 * M  # drawn at once, written later
    await _sync(api, 7, [{"agent_id": agt, "tunnel_id": "t", "bytes": 7 * M}])  # closes it
    hour_end = clock.now_ms()
    assert await _traffic_entries(api, acc) == [(21 * M, hour_end)]
    await _audit_holds(server, acc)
    clock.advance(HOUR)
    await server.service.maintenance.run()  # an idle agent's hour closes too
    assert await _traffic_entries(api, acc) == [(21 * M, hour_end), (7 * M, hour_end + HOUR)]
    await _audit_holds(server, acc)
    await server.service.maintenance.run()
    assert len(await _traffic_entries(api, acc)) == 2  # closed once
    raw = await api.ok("GET", f"/v1/accounts/{acc}/usage")
    assert raw["tunnels"][0]["reports"] == 7  # every report's usage is kept for audit


async def test_usage_records_and_ledger_refuse_changes(server: BillingServer) -> None:
    """The raw usage table is append-only like the ledger: UPDATE and DELETE are refused."""
    for sql in ("UPDATE usage_log SET bytes = 0", "DELETE FROM usage_log"):
        async with server.store.transaction() as tx:
            await tx.run(
                "INSERT INTO usage_log (relay_id, seq, account_id, agent_id, tunnel_id, bytes,"
                " tunnel_seconds, at) VALUES ('r', 1, 'a', 'b', 't', 1, 0, 0)"
            )
        with pytest.raises(StoreError, match="immutable"):
            async with server.store.transaction() as tx:
                await tx.run(sql)


async def test_rollup_off_posts_an_entry_per_report(
    tmp_path: Path, clock: ManualClock, database: str
) -> None:
    """ledger.traffic_rollup = 0 keeps today's one traffic entry per report."""
    config = make_config(tmp_path, database=database)
    config = type(config)(**{**_fields(config), "traffic_rollup_ms": 0})
    async with (
        BillingServer(config, clock=clock, maintenance=False) as srv,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, srv.url)
        acc, _, agt = await _paying(api)
        for seq in (1, 2):
            await _sync(api, seq, [{"agent_id": agt, "bytes": M}])
        assert [used for used, _ in await _traffic_entries(api, acc)] == [M, M]
        await _audit_holds(srv, acc)


def _fields(config: Any) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the statements every transaction sends, by kind, and the rows of set-based ones."""
    seen: Counter[str] = Counter()
    for name in ("_run", "_many", "_all", "_insert", "_insert_rows", "_update_rows"):
        for cls in Tx.__subclasses__():
            original = getattr(cls, name, None)
            if original is None:
                continue

            async def counted(self: Tx, *args: Any, _o: Any = original, _n: str = name) -> Any:
                seen[_n] += 1
                if _n in ("_insert_rows", "_update_rows"):  # (bulk, rows)
                    seen[f"rows {args[0].table}"] += len(args[1])
                return await _o(self, *args)

            monkeypatch.setattr(cls, name, counted)
    yield seen


async def test_a_report_is_a_few_statements_whatever_its_agents(
    api: Api, server: BillingServer, statements: Counter[str]
) -> None:
    """A report of 600 agents, each with usage and a lease request, costs the statements of 6.

    Both reports counted hold leases read before (updated) and new ones (inserted).
    """
    acc, token = await api.account()
    await api.deposit(acc, 10**9, "pay-many")
    ids = []
    for i in range(600):
        agent = await api.agent(acc, token, f"a{i}")
        await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": "basic"})
        ids.append(agent["id"])
    await api.ok("PATCH", f"/v1/agents/{ids[0]}", token, {"allow_metered": True})
    counts = []
    for seq, agents in ((1, ids[:3]), (2, ids[:6]), (3, ids)):
        statements.clear()
        answer = await _sync(
            api,
            seq,
            [{"agent_id": a, "tunnel_id": "t", "bytes": M} for a in agents],
            [{"agent_id": a, "want": 4 * M} for a in agents],
        )
        for lease in answer["leases"]:  # cumulative: each asked once in every report naming it
            asked = sum(1 for n in (3, 6) if n < seq * 3 and lease["agent_id"] in ids[:n])
            assert lease["granted_total"] == (asked + 1) * 4 * M
        counts.append(sum(n for k, n in statements.items() if not k.startswith("rows ")))
    assert counts[2] == counts[1], counts  # a statement per table, whatever the agents
    written = {k: n for k, n in statements.items() if k.startswith("rows ")}
    assert written == {"rows agents": 600, "rows leases": 600, "rows usage_log": 600}, written
    await _audit_holds(server, acc)


async def test_a_report_writes_its_usage_once_and_tunnel_totals_are_summed_from_it(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Each (agent, tunnel) of a report is one usage_log row and nothing more; totals add up."""
    _, _, agt = await _paying(api)
    t0 = clock.now_ms()
    await _sync(api, 1, [{"agent_id": agt, "tunnel_id": t, "bytes": M} for t in ("a", "b", "a")])
    clock.advance(60_000)
    await _sync(api, 2, [{"agent_id": agt, "tunnel_id": "a", "bytes": 5, "tunnel_seconds": 3}])
    async with server.store.reading() as tx:
        assert await tx.one("SELECT COUNT(*) FROM tunnel_usage") == (0,)
        assert await tx.one("SELECT COUNT(*) FROM usage_log WHERE relay_id = 'relay-1'") == (3,)
    got = await server.service.relays.tunnel_usage(agt)
    assert [(u.tunnel_id, u.bytes, u.tunnel_seconds, u.first_at, u.last_at) for u in got] == [
        ("a", 2 * M + 5, 3, t0, t0 + 60_000),
        ("b", M, 0, t0, t0),
    ]


async def test_the_upgrade_keeps_tunnel_totals_counted_before_the_usage_log(
    tmp_path: Path,
) -> None:
    """Totals kept before the upgrade read the same after it; the log's share leaves the table."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(SQLITE[:6], start=1):
        db.executescript(f"{script}; PRAGMA user_version={number};")
    db.execute(
        "INSERT INTO accounts (id, name, token_hash, balance, version, created_at)"
        " VALUES ('acc', 'a', 'h', 0, 0, 0)"
    )
    db.execute(
        "INSERT INTO agents (id, account_id, name, role, created_at)"
        " VALUES ('agt', 'acc', 'n', 'client', 0)"
    )
    # 'a': 10 bytes before the log, 7 since; 'b': all in the log; 'c': all before it
    for tunnel, total, seconds, first, last in (
        ("a", 17, 4, 1, 9),
        ("b", 3, 0, 5, 5),
        ("c", 2, 1, 2, 2),
    ):
        db.execute(
            "INSERT INTO tunnel_usage VALUES ('agt', ?, ?, ?, ?, ?)",
            (tunnel, total, seconds, first, last),
        )
    for relay, tunnel, nbytes, seconds, at in (
        ("r", "a", 7, 4, 9),
        ("r", "b", 3, 0, 5),
        ("ledger", "", 12, 0, 1),  # charged traffic from before the log: not a tunnel's usage
    ):
        db.execute(
            "INSERT INTO usage_log VALUES (?, 1, 'acc', 'agt', ?, ?, ?, ?)",
            (relay, tunnel, nbytes, seconds, at),
        )
    db.commit()
    db.close()
    path.chmod(0o600)
    async with SqliteStore(path) as store, store.reading() as tx:
        kept = await tx.all("SELECT tunnel_id, bytes, tunnel_seconds FROM tunnel_usage")
        got = await repo.tunnel_usage_of(tx, "agt")
    assert sorted(kept) == [("a", 10, 0), ("c", 2, 1)]
    assert [(u.tunnel_id, u.bytes, u.tunnel_seconds, u.first_at, u.last_at) for u in got] == [
        ("a", 17, 4, 1, 9),
        ("b", 3, 0, 5, 5),
        ("c", 2, 1, 2, 2),
    ]


async def test_cli_usage_prints_a_table_and_json(
    api: Api,
    server: BillingServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`billing usage ACC --since --until --agent`: a table with a total line, or JSON."""
    monkeypatch.setenv("QUOTARELAY_BILLING_URL", server.url)
    monkeypatch.setenv("QUOTARELAY_BILLING_TOKEN", ADMIN)
    acc, _, agt = await _paying(api)
    await _sync(api, 1, [{"agent_id": agt, "tunnel_id": "t-ssh", "bytes": 1234567}])

    async def run(*argv: str) -> str:
        args = build_parser().parse_args(["billing", "usage", acc, *argv])
        assert await args.func(args) == 0
        return capsys.readouterr().out

    out = await run("--since", "2000-01-01T00:00:00Z", "--agent", agt)
    lines = out.splitlines()
    assert lines[0].split() == ["AGENT", "TUNNEL", "BYTES", "SECONDS", "REPORTS", "FIRST", "LAST"]
    assert lines[1].split()[:6] == [agt, "t-ssh", "1234567", "(1.2M)", "0", "1"]
    assert lines[-1].split()[:3] == ["total", "1234567", "(1.2M)"]
    got = json.loads(await run("--json", "--until", "2000-01-01T00:00:00Z"))
    assert got["bytes"] == 0 and got["tunnels"] == []
    args = build_parser().parse_args(["billing", "usage", acc, "--until", "soon"])
    with pytest.raises(CliError, match="--until"):
        await args.func(args)


def test_traffic_rollup_is_configurable_and_checked() -> None:
    """ledger.traffic_rollup takes a divisor of a day or 0; anything else names the key."""

    def rollup(value: str) -> int:
        raw = {"server": {"admin_token": ADMIN}, "ledger": {"traffic_rollup": value}}
        return config_from_mapping(raw, {}).traffic_rollup_ms

    assert config_from_mapping({"server": {"admin_token": ADMIN}}, {}).traffic_rollup_ms == HOUR
    assert [rollup(v) for v in ("0", "15m", "1d")] == [0, 900_000, 86_400_000]
    for bad in ("7m", "2d", "soon"):
        with pytest.raises(ConfigError, match=r"ledger\.traffic_rollup"):
            rollup(bad)


def test_the_ledger_relay_id_is_reserved() -> None:
    """A relay named `ledger` would read as usage carried over from the ledger: refused."""
    raw = {"server": {"admin_token": ADMIN}, "relays": [{"id": "ledger", "token": "t" * 32}]}
    with pytest.raises(ConfigError, match=r"relays\[0\]\.id: 'ledger' is reserved"):
        config_from_mapping(raw, {})
    raw["relays"] = [{"id": "ledger-eu", "token": "t" * 32}]
    assert [r.id for r in config_from_mapping(raw, {}).relays] == ["ledger-eu"]


async def test_random_reports_of_many_agents_keep_the_account_payable(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Seeded reports naming three metered agents of one account: leases stay payable."""
    rng = random.Random(11)
    acc, token = await api.account()
    await api.deposit(acc, 3_000, "pay-three")
    agents = []
    for i, plan in enumerate(("basic", "basic", "payg")):
        agent = (await api.agent(acc, token, f"a{i}"))["id"]
        if plan == "basic":
            await api.deposit(acc, 5_000, f"pay-plan-{i}")
        await api.ok("POST", f"/v1/agents/{agent}/subscription", token, {"plan": plan})
        settings: dict[str, Any] = {"allow_metered": True}
        if i == 1:
            settings |= {"topup_package": "1G", "topup_limit": 1_000}
        await api.ok("PATCH", f"/v1/agents/{agent}", token, settings)
        agents.append(agent)
    held = {(r, a): 0 for r in (RELAY, RELAY2) for a in agents}  # what each relay holds
    granted = {(r, a): 0 for r in (RELAY, RELAY2) for a in agents}
    seqs = {RELAY: 0, RELAY2: 0}
    seen = {"topups": 0, "cut": 0, "metered": 0}
    for _ in range(30):
        clock.advance(rng.choice([0, 1000, 60_000]))
        relay = rng.choice([RELAY, RELAY2])
        seqs[relay] += 1
        items, leases = [], []
        for agent in agents:
            used = rng.randint(0, held[(relay, agent)])
            back = rng.randint(0, held[(relay, agent)] - used)
            held[(relay, agent)] -= used + back
            items.append({"agent_id": agent, "bytes": used, "tunnel_seconds": rng.randint(0, 99)})
            leases.append({"agent_id": agent, "want": rng.randint(0, 2 * G), "returned": back})
        answer = await api.ok(
            "POST", "/v1/sync", relay, {"seq": seqs[relay], "items": items, "leases": leases}
        )
        seen["topups"] += len(answer["topups"])
        for lease, asked in zip(answer["leases"], leases, strict=True):
            key = (relay, lease["agent_id"])
            seen["cut"] += lease["granted_total"] - granted[key] < asked["want"]
            held[key] += lease["granted_total"] - granted[key]
            granted[key] = lease["granted_total"]
        balance = await api.balance(acc)
        reserve = 0
        for agent in agents:
            row = await api.ok("GET", f"/v1/agents/{agent}")
            outstanding = sum(held[(r, agent)] for r in (RELAY, RELAY2))
            excess = outstanding - row["traffic_remaining"]
            seen["metered"] += excess > 0
            reserve += -(-excess * 100 // G) if excess > 0 else 0  # 0.1 coin/GB, rounded up
        assert reserve <= balance + len(agents), (reserve, balance)
        await _audit_holds(server, acc)
    assert min(seen.values()) > 0, seen  # top-ups, cut grants and leases on the balance


async def test_a_top_up_that_buys_nothing_keeps_the_draw_of_the_same_report(
    api: Api, server: BillingServer
) -> None:
    """Auto top-up at its limit of 0: the report's usage is still drawn, leases stay within it."""
    acc, token, agt = await _paying(api, plan="basic")  # 1 GB
    settings = {"topup_package": "1G", "topup_limit": 0, "topup_below": 0}
    await api.ok("PATCH", f"/v1/agents/{agt}", token, settings)
    first = await _sync(api, 1, [], [{"agent_id": agt, "want": G}])
    assert first["leases"][0]["granted_total"] == G
    second = await _sync(
        api, 2, [{"agent_id": agt, "bytes": 600 * M}], [{"agent_id": agt, "want": G}]
    )
    lease = second["leases"][0]
    assert (lease["traffic_remaining"], lease["granted_total"]) == (400 * M, G)  # nothing more
    assert (await api.ok("GET", f"/v1/agents/{agt}"))["traffic_remaining"] == 400 * M
    await _audit_holds(server, acc)


async def test_the_upgrade_fills_the_usage_log_from_the_ledger(tmp_path: Path) -> None:
    """A database from before the usage log gets its charged traffic as usage, tunnel ''."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    for number, script in enumerate(SQLITE[:4], start=1):
        db.executescript(f"{script}; PRAGMA user_version={number};")
    db.execute(
        "INSERT INTO accounts (id, name, token_hash, balance, version, created_at)"
        " VALUES ('acc', 'a', 'h', 0, 0, 0)"
    )
    for kind, used, at in (("traffic", 5, 1000), ("metered_traffic", 7, 2000), ("deposit", 0, 3)):
        db.execute(
            "INSERT INTO ledger (account_id, agent_id, kind, amount, balance_after,"
            " traffic_bytes, used_bytes, idempotency_key, reason, at)"
            " VALUES ('acc', 'agt', ?, 0, 0, 0, ?, 'k', 'r', ?)",
            (kind, used, at),
        )
    db.commit()
    db.close()
    path.chmod(0o600)
    async with SqliteStore(path) as store, store.reading() as tx:
        rows = await tx.all("SELECT agent_id, tunnel_id, bytes, at FROM usage_log ORDER BY at")
    assert rows == [("agt", "", 5, 1000), ("agt", "", 7, 2000)]
