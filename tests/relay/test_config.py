"""Relay config and agent registry: defaults, environment overrides, errors naming the key."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest

from relay.config import load_config
from relay.errors import ConfigError
from relay.registry import Registry


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    """An empty file gives the documented defaults, paths taken from the file's folder."""
    config = load_config(_write(tmp_path, ""))
    assert (config.relay_id, config.public_ports, config.low_water) == (
        "relay-1",
        range(20000, 20100),
        1_000_000,
    )
    assert config.stream_log_path == tmp_path / "var" / "streams.db"
    assert config.billing is None


def test_limits_default_to_sshds_anchors_and_the_documented_shares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[limits] defaults: MaxStartups 10:30:100, 10 per source, 30 s grace, 6 tries, 16 and 64."""
    config = load_config(_write(tmp_path, ""))
    gate = config.gate
    assert (gate.max_startups.start, gate.max_startups.rate, gate.max_startups.full) == (
        10,
        30,
        100,
    )
    assert (gate.per_source_startups, gate.login_grace_ms, gate.max_auth_tries) == (10, 30_000, 6)
    assert (gate.descriptor_reserve, gate.tunnel_reserve) == (128, 64)
    assert (config.shares.ssh_connections_per_agent, config.shares.channels_per_connection) == (
        16,
        64,
    )
    assert gate.admission(1024).ordinary_cap == 896
    monkeypatch.setenv("QUOTARELAY_RELAY_LIMITS_MAX_AUTH_TRIES", "3")
    assert load_config(_write(tmp_path, "")).gate.max_auth_tries == 3
    monkeypatch.setenv("QUOTARELAY_RELAY_LIMITS_MAX_AUTH_TRIES", "\uff13")  # a full-width 3
    with pytest.raises(ConfigError, match=r"limits\.max_auth_tries"):
        load_config(_write(tmp_path, ""))


def test_a_reserve_above_the_descriptor_limit_is_refused_at_start() -> None:
    """A reserve the open-files limit cannot hold is named when the relay starts."""
    config = load_config(None, {"limits.descriptor_reserve": 2000})
    with pytest.raises(ConfigError, match=r"limits\.descriptor_reserve"):
        config.gate.admission(1024)


def test_write_buffer_defaults_to_256_kib_and_takes_a_size(tmp_path: Path) -> None:
    """relay.write_buffer, the high-water mark of every socket the relay writes to."""
    assert load_config(_write(tmp_path, "")).write_buffer == 256 * 1024
    config = load_config(_write(tmp_path, '[relay]\nwrite_buffer = "1Mi"\n'))
    assert config.write_buffer == 1024 * 1024


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QUOTARELAY_RELAY_<SECTION>_<KEY> wins over the file, typed like the key; names kept."""
    monkeypatch.setenv("QUOTARELAY_RELAY_QUOTA_METERING", "false")
    monkeypatch.setenv("QUOTARELAY_RELAY_ADMIN_TOKEN", "from-env")
    config = load_config(_write(tmp_path, '[admin]\ntoken = "from-file"\n'))
    assert (config.metering, config.admin_token) == (False, "from-env")
    assert config.env_keys == ("QUOTARELAY_RELAY_ADMIN_TOKEN", "QUOTARELAY_RELAY_QUOTA_METERING")


def test_other_programs_variables_are_not_the_relays(tmp_path: Path) -> None:
    """The CLI's QUOTARELAY_BILLING_URL/_TOKEN and unprefixed keys never configure a relay."""
    env = {
        "QUOTARELAY_BILLING_URL": "http://127.0.0.1:8480",
        "QUOTARELAY_BILLING_TOKEN": "admin-token-0123456789",
        "QUOTARELAY_ADMIN_TOKEN": "the-cli-admin-token",
        "QUOTARELAY_BILLING_SERVER_PORT": "9",
        "QUOTARELAY_RELAY_BILING_URL": "http://127.0.0.1:8480",  # a typo: named, not read
    }
    config = load_config(_write(tmp_path, '[admin]\ntoken = "from-file"\n'), env=env)
    assert (config.billing, config.admin_token, config.env_keys) == (None, "from-file", ())
    assert config.env_ignored == ("QUOTARELAY_RELAY_BILING_URL",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[relay]\nport = 1\n", "relay.port: unknown key"),
        ("[nope]\n", "nope: unknown section"),
        ('[relay]\npublic_ports = "20-10"\n', "relay.public_ports"),
        ('[relay]\nssh_listen = "nohost"\n', "relay.ssh_listen: expected HOST:PORT"),
        ('[quota]\nlow_water = "lots"\n', "quota.low_water: not a size"),
        ('[quota]\ninactive_grace = "soon"\n', "quota.inactive_grace: not a duration"),
        ("[quota]\nmetering = 1\n", "quota.metering: expected bool"),
        ('[relay]\nid = "a b"\n', "relay.id"),
        ('[billing]\nurl = "http://127.0.0.1:1"\n', "billing.token: the relay token is required"),
        ('[billing]\nurl = "ftp://x"\ntoken = "t"\n', "billing.url"),
        ('[billing]\nurl = "http://x:1"\ntoken = "t"\noffline = "maybe"\n', "billing.offline"),
        ('[relay]\nwrite_buffer = "1K"\n', "relay.write_buffer: 16Ki..1Gi bytes, got 1000"),
        ('[relay]\nwrite_buffer = "2Gi"\n', "relay.write_buffer: 16Ki..1Gi bytes"),
        ('[relay]\nwrite_buffer = "big"\n', "relay.write_buffer: not a size"),
        ("[relay\n", "not valid TOML"),
        (
            '[limits]\nmax_startups = "10:30"\n',
            "limits.max_startups: '10:30' is not start:rate:full",
        ),
        ('[limits]\nmax_startups = "30:30:10"\n', "limits.max_startups: start 30 is above full"),
        ("[limits]\nper_source_startups = 0\n", "limits.per_source_startups: must be 1..1000000"),
        ("[limits]\nmax_auth_tries = true\n", "limits.max_auth_tries: must be 1..1000000"),
        ("[limits]\ntunnel_reserve = 200\n", "limits.tunnel_reserve: at most limits.descrip"),
        ('[limits]\nlogin_grace = "soon"\n', "limits.login_grace: not a duration"),
        ("[shares]\nchannels_per_connection = -1\n", "shares.channels_per_connection: must be"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    """Every mistake stops the relay with a message naming the key."""
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(_write(tmp_path, text))


def test_every_bad_key_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several mistakes (file and environment) give one error naming each key, in file order."""
    monkeypatch.setenv("QUOTARELAY_RELAY_QUOTA_METERING", "perhaps")
    text = (
        '[relay]\npublic_ports = "20-10"\ncolour = "red"\n'
        '[quota]\nlow_water = "lots"\n'
        '[billing]\nurl = "ftp://x"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert str(info.value).split("; ") == [
        "relay.colour: unknown key",
        "relay.public_ports: ports must satisfy 1 <= first <= last <= 65535, got '20-10'",
        "quota.metering: expected bool, got 'perhaps'",
        "quota.low_water: not a size: 'lots' (write bytes as 1500, 10K, 10M, 1G, 1Gi, ...)",
        "billing.url: expected http:// or https://, got 'ftp://x'",
    ]


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    """A config path that does not exist is an error naming it."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def _key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            'id = "a"\naccount = "x"\nkeys = ["ssh-rsa nonsense"]',
            r"agent\[0\].keys\[0\]: not a valid",
        ),
        ('id = "a b"\naccount = "x"\nkeys = ["{k}"]', r"agent\[0\].id"),
        ('id = "a"\naccount = "x"\nrole = "boss"\nkeys = ["{k}"]', r"agent\[0\].role"),
        ('id = "a"\naccount = "x"\nkeys = []', r"agent\[0\].keys: a non-empty list"),
        ('id = "a"\naccount = "x"\nkeys = ["{k}"]\ncolour = 1', "unknown key 'colour'"),
    ],
)
def test_registry_errors_name_the_entry(tmp_path: Path, entries: str, message: str) -> None:
    """A bad registry entry is refused with its index and key."""
    path = tmp_path / "agents.toml"
    path.write_text("[[agent]]\n" + entries.replace("{k}", _key()) + "\n")
    with pytest.raises(ConfigError, match=message):
        Registry(path)


def test_registry_refuses_duplicates(tmp_path: Path) -> None:
    """Two agents may not share an id, nor a key."""
    key = _key()
    path = tmp_path / "agents.toml"
    one = f'[[agent]]\nid = "a"\naccount = "x"\nkeys = ["{key}"]\n'
    path.write_text(one + one)
    with pytest.raises(ConfigError, match="duplicate agent id 'a'"):
        Registry(path)
    path.write_text(one + one.replace('id = "a"', 'id = "b"'))
    with pytest.raises(ConfigError, match="key already belongs to agent 'a'"):
        Registry(path)


def test_ciphers_are_checked_against_what_the_ssh_stack_offers(tmp_path: Path) -> None:
    """relay.ciphers defaults to AES-GCM; an unknown name is refused and named."""
    assert load_config(_write(tmp_path, "")).ciphers == (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
    )
    with pytest.raises(ConfigError, match=r"relay\.ciphers: unknown cipher 'rot13'"):
        load_config(_write(tmp_path, '[relay]\nciphers = "rot13"\n'))


def test_metrics_section_defaults_off_and_is_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[metrics] is off by default; listen and max_agents are checked, env sets integers."""
    config = load_config(_write(tmp_path, ""))
    assert (config.metrics.port, config.metrics.max_agents, config.metrics.per_tunnel) == (
        None,
        100,
        False,
    )
    monkeypatch.setenv("QUOTARELAY_RELAY_METRICS_MAX_AGENTS", "7")
    on = load_config(_write(tmp_path, '[metrics]\nlisten = "127.0.0.1:9480"\nper_tunnel = true\n'))
    assert (on.metrics.host, on.metrics.port, on.metrics.max_agents) == ("127.0.0.1", 9480, 7)
    assert on.metrics.per_tunnel is True
    monkeypatch.delenv("QUOTARELAY_RELAY_METRICS_MAX_AGENTS")
    for text, key in (
        ('[metrics]\nlisten = "9480"\n', "metrics.listen"),
        ("[metrics]\nmax_agents = 0\n", "metrics.max_agents"),
        ('[metrics]\nmax_agents = "ten"\n', "metrics.max_agents"),
    ):
        with pytest.raises(ConfigError, match=rf"^{key}"):
            load_config(_write(tmp_path, text))


def test_workers_default_to_one_per_core_at_most_eight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relay.workers: one per core by default (0), at most 8; 1 is one process; 0..256 only."""
    monkeypatch.delenv("QUOTARELAY_RELAY_WORKERS", raising=False)
    cores = len(os.sched_getaffinity(0))
    zero = "[relay]\nworkers = 0\n"
    assert load_config(_write(tmp_path, "")).workers == min(cores, 8)
    assert load_config(_write(tmp_path, "[relay]\nworkers = 1\n")).workers == 1
    assert load_config(_write(tmp_path, zero)).workers == min(cores, 8)
    assert load_config(_write(tmp_path, "[relay]\nworkers = 3\n")).workers == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert load_config(_write(tmp_path, zero)).workers == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert load_config(_write(tmp_path, zero)).workers == 1  # one core: the one-process relay
    with pytest.raises(ConfigError, match=r"relay\.workers"):
        load_config(_write(tmp_path, "[relay]\nworkers = -1\n"))
