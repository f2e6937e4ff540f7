"""The relay sync: /v1/sync exactly once, leases across relays, /v1/relay/agents, push events."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quota.billing import repo
from quota.billing.auth import Principal
from quota.billing.clock import ManualClock
from quota.billing.errors import ConfigError
from quota.billing.openapi import document
from quota.billing.server import BillingServer
from quota.contract import wire
from tests.billing.api import ADMIN, DAY, RELAY, RELAY2, Api, make_config

G = 10**9
M = 10**6
TTL = 600_000


async def _sync(
    api: Api, seq: int, items: Any = (), leases: Any = (), token: str = RELAY
) -> dict[str, Any]:
    body = {"seq": seq, "items": list(items), "leases": list(leases)}
    answer: dict[str, Any] = await api.ok("POST", "/v1/sync", token, body)
    return answer


def _lease(answer: dict[str, Any], agent_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [x for x in answer["leases"] if x["agent_id"] == agent_id]
    assert len(found) == 1
    return found[0]


async def _paying(api: Api, coins: int = 5, plan: str = "basic", **settings: Any) -> Any:
    """An account with `coins` deposited and one client agent subscribed to `plan`."""
    acc, token = await api.account()
    await api.deposit(acc, coins * 1000, f"pay-{acc}")
    agent = await api.agent(acc, token)
    await api.ok("POST", f"/v1/agents/{agent['id']}/subscription", token, {"plan": plan})
    if settings:
        await api.ok("PATCH", f"/v1/agents/{agent['id']}", token, settings)
    return acc, token, agent["id"]


async def test_each_seq_applies_once_under_replay_reorder_and_duplicates(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Replays, an old seq after newer ones, duplicates and reused seqs leave totals exact."""
    acc, _, agt = await _paying(api)
    sent = {1: 10 * M, 2: 20 * M, 3: 30 * M, 5: 50 * M, 4: 40 * M}
    first: dict[int, Any] = {}
    for seq, nbytes in sent.items():  # 4 arrives after 5
        items = [
            {"agent_id": agt, "tunnel_id": "t1", "bytes": nbytes // 2, "tunnel_seconds": 1},
            {"agent_id": agt, "tunnel_id": "t2", "bytes": nbytes // 2},
        ]
        first[seq] = await _sync(api, seq, items, [{"agent_id": agt, "want": M}])
        assert first[seq]["duplicate"] is False
        again = await _sync(api, seq, items, [{"agent_id": agt, "want": M}])
        assert again == {**first[seq], "duplicate": True}
    for seq in (2, 1, 4, 5, 3):  # late duplicates with other bodies: 409, nothing changes
        body = {"seq": seq, "items": [{"agent_id": agt, "bytes": G}], "leases": []}
        status, answer = await api.call("POST", "/v1/sync", RELAY, body)
        assert status == 409 and "another body" in answer["error"]
    used = sum(sent.values())
    agent = await api.ok("GET", f"/v1/agents/{agt}")
    assert agent["traffic_remaining"] == G - used
    clock.advance(3_600_000)  # the hour closes: its draws become one traffic entry
    await server.service.maintenance.run()
    page = await api.ok("GET", f"/v1/accounts/{acc}/ledger", params={"kind": "traffic"})
    assert [e["used_bytes"] for e in page["entries"]] == [used]
    assert _lease(first[4], agt)["granted_total"] == 5 * M
    assert _lease(first[4], agt)["traffic_remaining"] == G - used


async def test_a_seq_number_used_by_usage_is_refused_by_sync(
    api: Api, server: BillingServer
) -> None:
    """A seq recorded for the old /v1/usage is refused by /v1/sync (409); /v1/usage is gone."""
    _, _, agt = await _paying(api)
    async with server.store.transaction() as tx:
        old = repo.Report(kind="usage", fingerprint="", body="{}")
        await repo.save_report(tx, "relay-1", 7, old, 0)
    before = await api.ok("GET", f"/v1/agents/{agt}")
    body = {"seq": 7, "items": [{"agent_id": agt, "bytes": M}]}
    status, answer = await api.call("POST", "/v1/sync", RELAY, body)
    assert status == 409 and "seq" in answer["error"]
    assert await api.ok("GET", f"/v1/agents/{agt}") == before
    await _sync(api, 8)
    status, answer = await api.call("POST", "/v1/usage", RELAY, {"seq": 8, "items": []})
    assert status == 404 and "error" in answer


async def test_usage_is_kept_per_tunnel_and_charged_per_agent(
    api: Api, server: BillingServer
) -> None:
    """Two tunnels of one agent: each tunnel's totals are kept exactly, the agent pays their sum."""
    _, _, agt = await _paying(api)
    _, _, other = await _paying(api)
    items = [
        {"agent_id": agt, "tunnel_id": "t-nas", "bytes": 3 * M, "tunnel_seconds": 5},
        {"agent_id": agt, "tunnel_id": "t-web", "bytes": 7 * M, "tunnel_seconds": 2},
        {"agent_id": agt, "tunnel_id": "t-nas", "bytes": M},
        {"agent_id": other, "tunnel_id": "t-nas", "bytes": 4 * M},
        {"agent_id": "agt_gone", "tunnel_id": "t-x", "bytes": 9},
    ]
    await _sync(api, 1, items)
    assert (await _sync(api, 1, items))["duplicate"] is True
    await _sync(api, 1, [{"agent_id": agt, "tunnel_id": "t-web", "bytes": 2 * M}], token=RELAY2)
    tunnels = await server.service.relays.tunnel_usage(agt)
    assert {u.tunnel_id: (u.bytes, u.tunnel_seconds) for u in tunnels} == {
        "t-nas": (4 * M, 5),
        "t-web": (9 * M, 2),
    }
    assert [(u.tunnel_id, u.bytes) for u in await server.service.relays.tunnel_usage(other)] == [
        ("t-nas", 4 * M)
    ]
    assert (await api.ok("GET", f"/v1/agents/{agt}"))["traffic_remaining"] == G - 13 * M
    page = await api.ok("GET", f"/v1/agents/{other}")
    assert page["traffic_remaining"] == G - 4 * M


async def test_leases_on_two_relays_never_exceed_capacity_and_returns_free_it(
    api: Api, server: BillingServer
) -> None:
    """Two relays share a 1 GB bucket; a return frees capacity for the other relay."""
    _, _, agt = await _paying(api)
    one = await _sync(api, 1, leases=[{"agent_id": agt, "want": 700 * M}])
    assert _lease(one, agt)["granted_total"] == 700 * M
    two = await _sync(api, 1, leases=[{"agent_id": agt, "want": 700 * M}], token=RELAY2)
    assert _lease(two, agt)["granted_total"] == 300 * M
    two = await _sync(api, 2, leases=[{"agent_id": agt, "want": 100 * M}], token=RELAY2)
    assert _lease(two, agt)["granted_total"] == 300 * M  # nothing left
    await _sync(
        api, 2, [{"agent_id": agt, "bytes": 400 * M}], [{"agent_id": agt, "returned": 200 * M}]
    )
    two = await _sync(api, 3, leases=[{"agent_id": agt, "want": 500 * M}], token=RELAY2)
    # capacity 600 MB; relay-1 holds 700 - 400 - 200 = 100 MB, relay-2 held 300 MB
    assert _lease(two, agt)["granted_total"] == 300 * M + 200 * M
    assert _lease(two, agt)["traffic_remaining"] == 600 * M


async def test_metered_balance_counts_in_capacity(api: Api, server: BillingServer) -> None:
    """With metered traffic allowed, the balance's worth of bytes can be leased, no more."""
    _, _, agt = await _paying(api, coins=6, allow_metered=True)  # 1 coin left: 10 GB metered
    answer = await _sync(api, 1, leases=[{"agent_id": agt, "want": 100 * G}])
    granted = _lease(answer, agt)["granted_total"]
    assert G + 10 * G <= granted < G + 10 * G + 10 * M  # rounding down gives < 1 millicoin more
    spent = await _sync(api, 2, [{"agent_id": agt, "bytes": granted}])
    assert _lease(spent, agt)["unbilled_bytes"] == 0


async def test_want_is_met_by_an_auto_topup_within_its_limit(
    api: Api, server: BillingServer
) -> None:
    """A shortfall buys the fewest packages within the limit; past the limit, no more."""
    acc, _, agt = await _paying(api, coins=10, topup_package="1G", topup_limit=1000)
    answer = await _sync(api, 1, leases=[{"agent_id": agt, "want": 2500 * M}])
    assert answer["topups"] == [{"agent_id": agt, "package": "1G", "count": 2, "amount": 1000}]
    assert _lease(answer, agt)["granted_total"] == 2500 * M
    assert await api.balance(acc) == 4000
    other = await _sync(api, 1, leases=[{"agent_id": agt, "want": 2 * G}], token=RELAY2)
    assert other["topups"] == [] and _lease(other, agt)["granted_total"] == 500 * M
    assert await api.balance(acc) == 4000


async def test_no_topup_loop_when_the_balance_cannot_pay(api: Api, server: BillingServer) -> None:
    """A balance that cannot buy blocks the top-up until a deposit; no retry in between."""
    acc, _, agt = await _paying(api, coins=5, topup_package="1G", topup_limit=10_000)
    entries = len((await api.ok("GET", f"/v1/accounts/{acc}/ledger"))["entries"])
    for seq in (1, 2, 3):
        answer = await _sync(api, seq, leases=[{"agent_id": agt, "want": 2 * G}])
        assert answer["topups"] == [] and _lease(answer, agt)["granted_total"] == G
    assert (await api.ok("GET", f"/v1/agents/{agt}"))["topup_blocked"] is True
    assert len((await api.ok("GET", f"/v1/accounts/{acc}/ledger"))["entries"]) == entries
    await api.deposit(acc, 500, "more")
    answer = await _sync(api, 4, leases=[{"agent_id": agt, "want": G}])
    assert answer["topups"] == [{"agent_id": agt, "package": "1G", "count": 1, "amount": 500}]
    assert _lease(answer, agt)["granted_total"] == 2 * G


async def test_expired_leases_stop_counting_and_are_not_revived(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """After lease_ttl without a sync a lease frees its bytes; a late relay cannot reclaim them."""
    _, _, agt = await _paying(api)
    one = await _sync(api, 1, leases=[{"agent_id": agt, "want": G}])
    assert _lease(one, agt)["valid_until"] == clock.now_ms() + TTL
    assert (
        _lease(await _sync(api, 1, leases=[{"agent_id": agt, "want": G}], token=RELAY2), agt)[
            "granted_total"
        ]
        == 0
    )
    clock.advance(TTL - 1)
    two = await _sync(api, 2, leases=[{"agent_id": agt, "want": G}], token=RELAY2)
    assert _lease(two, agt)["granted_total"] == 0  # relay-1's lease is still valid
    clock.advance(1)
    two = await _sync(api, 3, leases=[{"agent_id": agt, "want": G}], token=RELAY2)
    assert _lease(two, agt)["granted_total"] == G
    late = await _sync(api, 2, leases=[{"agent_id": agt, "want": G}])
    assert _lease(late, agt)["granted_total"] == G  # nothing new: relay-2 holds it all
    assert _lease(late, agt)["valid_until"] == clock.now_ms() + TTL


async def test_inactive_unknown_and_support_agents(api: Api, server: BillingServer) -> None:
    """No subscription: inactive, no lease; unknown ids answered; support: active, no lease."""
    acc, token = await api.account()
    idle = await api.agent(acc, token, "idle")
    helper = await api.agent(acc, token, "helper", role="support")
    items = [
        {"agent_id": idle["id"], "bytes": 5},
        {"agent_id": "agt_nope", "bytes": 7},
        {"agent_id": helper["id"], "bytes": 9},
    ]
    leases = [{"agent_id": a, "want": G} for a in (idle["id"], "agt_nope", helper["id"])]
    answer = await _sync(api, 1, items, leases)
    got = {
        x["agent_id"]: (x["status"], x["granted_total"], x["unbilled_bytes"])
        for x in answer["leases"]
    }
    assert got == {
        idle["id"]: ("inactive", 0, 5),
        "agt_nope": ("unknown", 0, 7),
        helper["id"]: ("active", 0, 0),
    }
    assert [x["agent_id"] for x in answer["leases"]] == [idle["id"], "agt_nope", helper["id"]]


async def test_relay_agent_list_shows_every_account_and_live_keys_only(
    api: Api, server: BillingServer
) -> None:
    """All accounts' agents with their state; revoked keys are left out."""
    _, _, paying = await _paying(api)
    acc, token = await api.account("other")
    helper = await api.agent(acc, token, "helper", role="support")
    idle = await api.agent(acc, token, "idle")
    await api.ok("DELETE", f"/v1/agents/{idle['id']}/keys/{idle['keys'][0]['id']}", token)
    listed = {a["id"]: a for a in (await api.ok("GET", "/v1/relay/agents", RELAY))["agents"]}
    assert {k: (v["status"], len(v["public_keys"])) for k, v in listed.items()} == {
        paying: ("active", 1),
        helper["id"]: ("active", 1),
        idle["id"]: ("inactive", 0),
    }
    assert listed[helper["id"]]["role"] == "support" and listed[idle["id"]]["account_id"] == acc


async def test_bad_input_and_wrong_tokens(api: Api, server: BillingServer) -> None:
    """Account or admin tokens get 403; malformed bodies 400 naming the field; plain GET 400."""
    _, token = await api.account()
    for tok in (token, ADMIN):
        status, answer = await api.call("POST", "/v1/sync", tok, {"seq": 1})
        assert status == 403 and "relay" in answer["error"]
        status, answer = await api.call("GET", "/v1/relay/agents", tok)
        assert status == 403
    assert answer["error"] == (
        "an admin token may not call GET /v1/relay/agents; it takes a relay token"
    )
    for body, named in [
        ({"seq": "1"}, "seq"),
        ({"seq": 1, "items": [{"agent_id": "a", "bytes": -1}]}, "items[0].bytes"),
        ({"seq": 1, "leases": [{"agent_id": "a", "want": 1.5}]}, "leases[0].want"),
        ({"seq": 1, "leases": [{"agent_id": "a", "wants": 1}]}, "wants"),
        ({"items": []}, "seq"),
    ]:
        status, answer = await api.call("POST", "/v1/sync", RELAY, body)
        assert status == 400 and named in answer["error"], (body, answer)
    status, answer = await api.call("GET", "/v1/relay/events", RELAY)
    assert status == 400 and "WebSocket" in answer["error"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await api.session.ws_connect(
            api.url + "/v1/relay/events", headers={"Authorization": f"Bearer {token}"}
        )
    assert err.value.status == 403
    assert (await _sync(api, 1))["leases"] == []  # the refused seq 1 was never recorded


async def _events(api: Api) -> aiohttp.ClientWebSocketResponse:
    ws = await api.session.ws_connect(
        api.url + "/v1/relay/events", headers={"Authorization": f"Bearer {RELAY}"}
    )
    assert await _next(ws) == wire.PushEvent(type="hello")
    return ws


async def _next(ws: aiohttp.ClientWebSocketResponse) -> wire.PushEvent:
    """The next event, or fail after 5 s."""
    return wire.parse(wire.PushEvent, await ws.receive_json(timeout=5))


async def test_push_events_follow_deposit_package_revoke_freeze_and_renewal(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Each committed change reaches a connected relay with the agents it concerns."""
    acc, token, agt = await _paying(api, coins=20, plan="pro")
    ws = await _events(api)
    key = (await api.ok("GET", f"/v1/agents/{agt}"))["keys"][0]["id"]
    await api.deposit(acc, 1000, "p2")
    assert await _next(ws) == wire.PushEvent(type="changed", agent_ids=[agt], reason="deposit")
    await api.ok("POST", f"/v1/agents/{agt}/packages", token, {"package": "1G"})
    assert await _next(ws) == wire.PushEvent(type="changed", agent_ids=[agt], reason="package")
    await api.ok("DELETE", f"/v1/agents/{agt}/keys/{key}", token)
    assert await _next(ws) == wire.PushEvent(type="changed", agent_ids=[agt], reason="revoke")
    await api.ok("PATCH", f"/v1/agents/{agt}", token, {"allow_metered": True})
    assert await _next(ws) == wire.PushEvent(type="changed", agent_ids=[agt], reason="settings")
    new = await api.agent(acc, token, "new")
    assert await _next(ws) == wire.PushEvent(
        type="changed", agent_ids=[new["id"]], reason="register"
    )
    clock.advance(30 * DAY)  # 1.5 coin left cannot renew pro (19): lapse and freeze
    await api.ok("POST", "/v1/maintenance")
    assert [await _next(ws), await _next(ws)] == [
        wire.PushEvent(type="changed", agent_ids=[agt], reason="lapse"),
        wire.PushEvent(type="changed", agent_ids=[agt, new["id"]], reason="freeze"),
    ]
    await api.deposit(acc, 19_000, "p3")  # unfreezes and renews at once
    reasons = [(await _next(ws)).reason for _ in range(3)]
    assert reasons == ["deposit", "unfreeze", "renewal"]
    await ws.close()


async def test_a_stalled_push_client_never_blocks_billing_and_is_dropped(
    api: Api, server: BillingServer
) -> None:
    """A relay that stops reading is cut off; deposits meanwhile answer at once."""
    acc, token = await api.account()
    agent = await api.agent(acc, token)
    hub = server.service.push
    hub.queue_max = 4
    reader, writer = await asyncio.open_connection(server.config.host, server.port, limit=1024)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/relay/events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {RELAY}\r\n\r\n"
        ).encode()
    )
    assert b"101" in await reader.readline()  # then never read again
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    big = wire.PushEvent(type="changed", agent_ids=["agt_" + "x" * 60] * 5000, reason="test")
    payment = 0
    while hub.connected:
        assert loop.time() < deadline, "the stalled client was never dropped"
        hub.publish(big)
        payment += 1
        started = loop.time()
        await api.deposit(acc, 1, f"stall-{payment}")
        assert loop.time() - started < 1.0
    assert await api.balance(acc) == payment
    assert payment > hub.queue_max + 1  # the socket stalled the sender before the queue filled
    writer.close()
    ws = await _events(api)  # a fresh connection works as before
    await api.deposit(acc, 1, "after")
    assert await _next(ws) == wire.PushEvent(
        type="changed", agent_ids=[agent["id"]], reason="deposit"
    )
    await ws.close()


async def test_server_shutdown_closes_push_connections_at_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Leaving the server closes connected relays' WebSockets instead of waiting for them."""
    async with aiohttp.ClientSession() as session:
        async with BillingServer(make_config(tmp_path), clock=clock, maintenance=False) as srv:
            ws = await _events(Api(session, srv.url))
            loop = asyncio.get_running_loop()
            started = loop.time()
        assert loop.time() - started < 5
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert srv.service.push.connected == 0


def test_lease_ttl_is_configurable_and_checked(tmp_path: Path) -> None:
    """server.lease_ttl defaults to 10 minutes; a bad value names the key."""
    assert make_config(tmp_path).lease_ttl_ms == TTL
    assert make_config(tmp_path, lease_ttl="30s").lease_ttl_ms == 30_000
    for bad in ("0s", "soon"):
        with pytest.raises(ConfigError, match=r"^server\.lease_ttl"):
            make_config(tmp_path, lease_ttl=bad)


def test_openapi_documents_the_push_channel() -> None:
    """The events route is a GET that answers 101 and names the WebSocket messages."""
    op = document()["paths"]["/v1/relay/events"]["get"]
    assert "WebSocket" in op["description"] and "hello" in op["description"]
    schema = op["responses"]["101"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/PushEvent"}
    assert document()["paths"]["/v1/sync"]["post"]["x-token-kinds"] == ["relay"]


async def _outstanding_sum(server: BillingServer, agent_id: str, now: int) -> int:
    async with server.store.reading() as tx:
        return await repo.outstanding(tx, agent_id, now)


async def test_random_syncs_of_two_relays_keep_leases_payable(
    api: Api, server: BillingServer, clock: ManualClock
) -> None:
    """Seeded random reports: leases stay within capacity and every byte relayed is billed."""
    rng = random.Random(7)
    acc, _, agt = await _paying(
        api, coins=7, allow_metered=True, topup_package="1G", topup_limit=1000
    )
    relays = {RELAY: {"seq": 0, "held": 0, "until": 0}, RELAY2: {"seq": 0, "held": 0, "until": 0}}
    seen = {"topups": 0, "forfeits": 0, "cut": 0}
    for _ in range(40):
        clock.advance(rng.choice([0, 1000, TTL // 2, TTL]))
        token = rng.choice([RELAY, RELAY2])
        mine = relays[token]
        held = mine["held"] if mine["until"] > clock.now_ms() else 0  # expired: forfeited
        seen["forfeits"] += held < mine["held"]
        used = rng.randint(0, held)
        returned = rng.randint(0, held - used)
        mine["seq"] += 1
        want = rng.randint(0, 3 * G)
        answer = await _sync(
            api,
            mine["seq"],
            [{"agent_id": agt, "bytes": used}],
            [{"agent_id": agt, "want": want, "returned": returned}],
            token=token,
        )
        lease = _lease(answer, agt)
        assert lease["unbilled_bytes"] == 0
        granted = lease["granted_total"] - mine.get("granted", 0)
        seen["topups"] += len(answer["topups"])
        seen["cut"] += granted < want
        mine["granted"] = lease["granted_total"]
        mine["held"] = held - used - returned + granted
        mine["until"] = lease["valid_until"]
        agent = await api.ok("GET", f"/v1/agents/{agt}")
        balance = await api.balance(acc)
        payable = agent["traffic_remaining"] + (balance + 1) * G // 100  # 0.1 coin/GB
        assert await _outstanding_sum(server, agt, clock.now_ms()) <= payable
        assert sum(r["held"] for r in relays.values() if r["until"] > clock.now_ms()) <= payable
    assert min(seen.values()) > 0, seen  # top-ups, expiries and cut grants all happened


async def _events_as(api: Api, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await api.session.ws_connect(
        api.url + "/v1/relay/events", headers={"Authorization": f"Bearer {token}"}
    )
    assert await _next(ws) == wire.PushEvent(type="hello")
    return ws


async def test_a_package_pushes_its_bytes_to_the_relay_that_waits_for_them(api: Api) -> None:
    """A relay asked more than the agent had: a package bought later rides on its push event."""
    _, token, agt = await _paying(api, coins=20)  # basic: 1 GB
    short = await _sync(api, 1, leases=[{"agent_id": agt, "want": 3 * G}])
    assert _lease(short, agt)["granted_total"] == G  # all there was: 2 GB still wanted
    waiting, other = await _events_as(api, RELAY), await _events_as(api, RELAY2)
    await api.ok("POST", f"/v1/agents/{agt}/packages", token, {"package": "1G"})
    pushed = await _next(waiting)
    assert (pushed.reason, pushed.agent_ids) == ("package", [agt])
    [lease] = pushed.leases
    assert (lease.agent_id, lease.status, lease.granted_total) == (agt, "active", 2 * G)
    assert lease.traffic_remaining == 2 * G  # the new lease is held, not yet used
    assert await _next(other) == wire.PushEvent(type="changed", agent_ids=[agt], reason="package")
    # the relay's next answer states the same total: nothing is granted twice
    after = await _sync(api, 2, leases=[{"agent_id": agt, "want": 0}])
    assert _lease(after, agt)["granted_total"] == 2 * G
    # all granted now: the next package waits for an ask, it is not pushed
    await api.ok("POST", f"/v1/agents/{agt}/packages", token, {"package": "1G"})
    assert (await _next(waiting)).leases == []
    assert (await _sync(api, 3))["leases"] == []
    await waiting.close()
    await other.close()


async def test_a_purchase_for_a_waiting_relay_writes_its_push_before_it_answers(
    api: Api, server: BillingServer
) -> None:
    """The push that resumes a relay's streams is on its socket when the purchase returns."""
    _, _, agt = await _paying(api, coins=20)
    await _sync(api, 1, leases=[{"agent_id": agt, "want": 3 * G}])  # 2 GB still wanted
    waiting, other = await _events_as(api, RELAY), await _events_as(api, RELAY2)
    hub = server.service.push
    buy = wire.BuyPackageRequest(package="1G")
    await server.service.plans.buy_package(Principal(kind="admin"), "buy-1", agt, buy)
    assert hub.unsent == 0  # both relays' events written, not queued behind the answer
    assert [lease.granted_total for lease in (await _next(waiting)).leases] == [2 * G]
    assert (await _next(other)).leases == []
    await _sync(api, 2, leases=[{"agent_id": agt, "want": 0}])  # nobody waits any more
    await server.service.plans.buy_package(Principal(kind="admin"), "buy-2", agt, buy)
    assert hub.unsent == 2  # no lease granted: the events leave in their own time
    assert (await _next(waiting)).leases == []
    assert hub.unsent == 0
    await waiting.close()
    await other.close()
