"""Who may do what with UDP tunnels, idle expiry, and the agent's spec parsing."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncssh
import pytest

from relay.streamlog.query import list_streams
from tests.rigs.agent import AgentProc, start
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import ROOT, Relay
from tests.rigs.services import env_without_agent
from tests.rigs.waits import poll
from tests.udp.helpers import UdpService, datagram, echo_round_trips, peer
from tools.agent.config import AgentConfigError, load_agent_config, parse_connect, parse_expose


async def refused(relay: Relay, agent: AgentSpec, role: str, *specs: str) -> str:
    proc = AgentProc(relay, agent, role, *specs)
    await proc.start()
    assert await proc.finish() == 1
    return proc.log.read_text()


async def test_role_account_and_address_rules(
    relay: Relay, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """Support cannot expose, clients cannot connect, accounts stay apart, no address is dialled."""
    await start(procs, AgentProc(relay, agents["nas"], "expose", "--udp", "dns:53:127.0.0.1:53"))
    err = await refused(relay, agents["tech"], "expose", "--udp", "dns2:53:127.0.0.1:53")
    assert "agent tech is a support agent and cannot register tunnels" in err
    err = await refused(relay, agents["nas"], "connect", "--udp", "0:dns:53")
    assert "agent nas-agent is a client agent and cannot reach endpoints" in err
    err = await refused(relay, agents["gxtech"], "connect", "--udp", "0:dns:53")
    assert "no UDP endpoint dns:53 in your account" in err
    err = await refused(relay, agents["tech"], "connect", "--udp", "0:127.0.0.1:53")
    assert "the relay does not dial 127.0.0.1:53" in err
    err = await refused(relay, agents["idle"], "expose", "--udp", "cam:53:127.0.0.1:53")
    assert "agent idle-agent is inactive" in err
    err = await refused(relay, agents["gx"], "expose", "--udp", f"{relay.ports[1] + 1}:h:53")
    assert "is outside this relay's range" in err
    assert (await relay.call("status"))["tunnels"] == 1


async def test_an_idle_flow_expires_and_a_new_one_starts(
    tmp_path: Path, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """A flow idle for udp.idle_timeout closes as "idle"; the next datagram opens a new one."""
    relay = Relay(tmp_path, list(agents.values()), extra={"udp": {"idle_timeout": "300ms"}})
    await relay.start()
    try:
        await relay.call("grant", "nas-agent", 10**6)
        async with UdpService() as echo:
            agent = AgentProc(relay, agents["nas"], "expose", "--udp", f"0:127.0.0.1:{echo.port}")
            await start(procs, agent)
            p = await peer((await agent.wait_for("tunnel_ready"))["port"])
            await echo_round_trips(p, [datagram(1, 100)])
            (first,) = await relay.call("streams")

            async def expired() -> bool:
                rows = await list_streams(relay.db_path)
                return [r["close_reason"] for r in rows] == ["idle"]

            await poll(expired, "the idle flow closed")
            await echo_round_trips(p, [datagram(2, 100)])
            (second,) = await relay.call("streams")
            assert second["stream_id"] != first["stream_id"]
            p.close()
    finally:
        await relay.stop()


def test_specs_parse_or_name_the_mistake(tmp_path: Path) -> None:
    """Specs and settings are checked before connecting; errors say which flag or key."""
    e = parse_expose("udp", "DNS:53:127.0.0.1:5353")
    assert (e.name, e.port, e.host, e.host_port, e.listen_host) == (
        "dns",
        53,
        "127.0.0.1",
        5353,
        "udp/dns",
    )
    assert parse_expose("udp", "0:127.0.0.1:27015").listen_host == "udp/"
    c = parse_connect("udp", "5353:dns:53")
    assert (c.bind, c.local_port, c.name, c.port) == ("127.0.0.1", 5353, "dns", 53)
    for bad in ("dns:0:h:1", "dns:53:h", "a b:53:h:1", "1:h:99999"):
        with pytest.raises(AgentConfigError, match="--udp"):
            parse_expose("udp", bad)
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nrelay = "relay.example:2222"\nuser = "nas"\nkey = "k"\n')
    cfg = load_agent_config(config, {"user": "nas-agent", "known_hosts": "ignore"})
    assert (cfg.host, cfg.port, cfg.user, cfg.key, cfg.known_hosts) == (
        "relay.example",
        2222,
        "nas-agent",
        tmp_path / "k",
        None,
    )
    env = {"QUOTARELAY_AGENT_AGENT_USER": "env-agent", "QUOTARELAY_AGENT_AGENT_KEY": "e"}
    env["QUOTARELAY_RELAY_AGENT_KEY"] = "not-the-agents"
    cfg = load_agent_config(config, {"user": "flag-agent"}, env=env)
    assert (cfg.user, cfg.key, cfg.env_keys) == (  # a flag beats the variable
        "flag-agent",
        tmp_path / "e",
        ("QUOTARELAY_AGENT_AGENT_KEY",),
    )
    config.write_text('[agent]\nrelay = "x:1"\nusr = "a"\n')
    with pytest.raises(AgentConfigError, match=r"agent\.usr"):
        load_agent_config(config, {})


async def test_an_inactive_owner_drops_datagrams_and_its_flows_close_after_the_grace(
    tmp_path: Path, agents: dict[str, AgentSpec], procs: list[AgentProc]
) -> None:
    """Inactive: datagrams dropped and counted, flows closed after the grace; active: flowing.

    The service echoes, so the flow is answered and logged on its own (not summed).
    """
    extra = {"quota": {"inactive_grace": "500ms"}}
    relay = Relay(tmp_path, list(agents.values()), extra=extra)
    await relay.start()
    try:
        await relay.call("grant", "nas-agent", 10**6)
        async with UdpService() as sink:
            agent = AgentProc(relay, agents["nas"], "expose", "--udp", f"0:127.0.0.1:{sink.port}")
            await start(procs, agent)
            p = await peer((await agent.wait_for("tunnel_ready"))["port"])
            p.send(datagram(1, 100))
            await poll(lambda: len(p.got) == 1, "a datagram and its echo while active")
            await relay.call("set_active", "nas-agent", False)
            p.send(datagram(2, 300))

            async def closed_inactive() -> bool:
                rows = await list_streams(relay.db_path)
                return [(r["close_reason"], r["bytes_dropped"]) for r in rows] == [
                    ("inactive", 300)
                ]

            await poll(closed_inactive, "the flow closed after the grace, 300 bytes dropped")
            await relay.call("set_active", "nas-agent", True)
            p.send(datagram(3, 200))
            await poll(lambda: len(p.got) == 2, "a datagram and its echo once active again")
            p.close()
        assert (await relay.call("agent", "nas-agent"))["used"] == 2 * (100 + 200)
    finally:
        await relay.stop()


async def test_the_agent_names_the_variables_it_took(tmp_path: Path) -> None:
    """An agent process prints config_from_env first: its own variables' names, no values."""
    key = tmp_path / "id"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    key.chmod(0o600)
    env = {
        **env_without_agent(),
        "QUOTARELAY_AGENT_AGENT_KEY": str(key),
        "QUOTARELAY_AGENT_AGENT_KNOWN_HOSTS": "ignore",
        "QUOTARELAY_RELAY_AGENT_USER": "a-relay-variable",  # another program's: not read
        "QUOTARELAY_AGENT_AGENT_USR": "a-typo",  # its prefix, no key: named as ignored
    }
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tools.cli", "agent", "expose", "--relay", "127.0.0.1:9"),
        *("--user", "nas-agent", "--tcp", "web:80:127.0.0.1:8080"),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert first == {
            "event": "config_from_env",
            "keys": ["QUOTARELAY_AGENT_AGENT_KEY", "QUOTARELAY_AGENT_AGENT_KNOWN_HOSTS"],
            "ignored": ["QUOTARELAY_AGENT_AGENT_USR"],
        }
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
