"""Refusals: clear to the ssh client, one log line, and nothing opened."""

from __future__ import annotations

import json

from relay.streamlog.query import list_streams
from tests.rigs.keys import AgentSpec
from tests.rigs.relay import Relay
from tests.rigs.services import DigestService
from tests.rigs.ssh import Ssh, expose


def refusal_lines(relay: Relay) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in relay.log_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == "refused"]


async def assert_nothing_opened(relay: Relay, service: DigestService | None = None) -> None:
    status = await relay.call("status")
    assert (status["tunnels"], status["streams"]) == (0, 0)
    assert await list_streams(relay.db_path) == []
    if service is not None:
        assert service.conns == []


async def test_support_agent_cannot_register_an_endpoint(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """A support agent's -R fails; with -v the relay's reason is shown."""
    ssh = await Ssh(relay, agents["tech"], "-v", "-N", "-R", "nas:22:127.0.0.1:22", "relay").start()
    code, err = await ssh.finish()
    assert code == 255
    assert "remote port forwarding failed for listen port 22" in err
    assert "Remote: quotarelay: agent tech is a support agent and cannot register tunnels" in err
    assert [x["agent_id"] for x in refusal_lines(relay)] == ["tech"]
    await assert_nothing_opened(relay)


async def test_other_accounts_endpoint_is_unreachable(
    relay: Relay, agents: dict[str, AgentSpec], clients: list[Ssh]
) -> None:
    """A support agent of another account cannot reach, or learn of, acme's endpoint."""
    async with DigestService() as service:
        await expose(relay, agents["nas"], f"nas:22:127.0.0.1:{service.port}", clients)
        ssh = await Ssh(relay, agents["other"], "-W", "nas:22", "relay").start()
        code, err = await ssh.finish()
        assert code == 255
        assert (
            "open failed: administratively prohibited: "
            "quotarelay: no endpoint nas:22 in your account" in err
        )
        assert service.conns == []
        assert (await relay.call("status"))["streams"] == 0
        assert await list_streams(relay.db_path) == []
    assert [x["agent_id"] for x in refusal_lines(relay)] == ["other-tech"]


async def test_port_outside_range_is_refused(relay: Relay, agents: dict[str, AgentSpec]) -> None:
    """A public port outside the relay's range is refused and nothing listens."""
    port = relay.ports[1] + 1
    ssh = await Ssh(relay, agents["web"], "-v", "-N", "-R", f"{port}:127.0.0.1:80", "relay").start()
    code, err = await ssh.finish()
    assert code == 255
    assert f"remote port forwarding failed for listen port {port}" in err
    assert f"quotarelay: port {port} is outside this relay's range" in err
    assert len(refusal_lines(relay)) == 1
    await assert_nothing_opened(relay)


async def test_arbitrary_host_port_is_never_dialled(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """Forwarding to a host:port that is not an endpoint is refused; the relay dials nothing."""
    async with DigestService() as service:
        target = f"127.0.0.1:{service.port}"
        ssh = await Ssh(relay, agents["tech"], "-W", target, "relay").start()
        code, err = await ssh.finish()
        assert code == 255
        assert f"quotarelay: the relay does not dial {target}: name an endpoint" in err
        await assert_nothing_opened(relay, service)
    assert len(refusal_lines(relay)) == 1


async def test_inactive_agent_cannot_open_a_tunnel(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """An inactive client agent's -R is refused with the reason."""
    ssh = await Ssh(relay, agents["idle"], "-v", "-N", "-R", "cam:80:127.0.0.1:80", "relay").start()
    code, err = await ssh.finish()
    assert code == 255
    assert "quotarelay: agent idle-agent is inactive (no active subscription)" in err
    assert len(refusal_lines(relay)) == 1
    await assert_nothing_opened(relay)


async def test_password_and_unknown_keys_are_refused(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """Only public keys of the named agent log in; passwords are not offered."""
    spec = agents["tech"]
    impostor = AgentSpec("nas-agent", "acme", "client", spec.key_path, spec.public)
    ssh = await Ssh(relay, impostor, "-W", "nas:22", "relay").start(
        "-o", "PreferredAuthentications=publickey,password,keyboard-interactive"
    )
    code, err = await ssh.finish()
    assert code == 255
    assert "Permission denied (publickey)" in err
    await assert_nothing_opened(relay)


async def test_stock_ssh_negotiates_aes_gcm_and_a_client_without_it_is_refused(
    relay: Relay, agents: dict[str, AgentSpec]
) -> None:
    """Only AES-GCM is offered: stock OpenSSH picks it; a chacha20-only client cannot log in."""
    ssh = await Ssh(relay, agents["tech"], "-v", "-W", "nas:22", "relay").start()
    _, err = await ssh.finish()
    assert "cipher: aes128-gcm@openssh.com" in err
    chacha = await Ssh(relay, agents["tech"], "-W", "nas:22", "relay").start(
        "-o", "Ciphers=chacha20-poly1305@openssh.com"
    )
    code, err = await chacha.finish()
    assert code == 255 and "no matching cipher found" in err
