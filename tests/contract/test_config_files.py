"""Config files decoded by the contract's schemas: every problem at once, each naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from quota.contract.config import Environment, Problems, Section, decode_file
from quota.contract.files import AgentFile, BillingFile, RelayFile
from tools.agent.config import AgentConfigError, load_agent_config


def test_agent_config_reports_every_problem_at_once(tmp_path: Path) -> None:
    """Unknown keys, bad values and missing settings of the agent all appear in one error."""
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nrelay = "nohost"\nusr = "a"\nbackoff_max = "soon"\n')
    with pytest.raises(AgentConfigError) as info:
        load_agent_config(path, {"idle_timeout": "later"})
    assert str(info.value).split("; ") == [
        "agent.usr: unknown key",
        "agent.backoff_max: not a duration: 'soon' (write 500ms, 30s, 5m, 2h, 1d)",
        "agent.idle_timeout: not a duration: 'later' (write 500ms, 30s, 5m, 2h, 1d)",
        "agent.relay (--relay): expected HOST:PORT, got 'nohost'",
        "agent.user (--user): the agent id is required",
        "agent.key (--key): a private key file is required",
    ]


def test_sizes_durations_and_coin_go_through_the_shared_parsers() -> None:
    """Text and bare numbers decode to bytes, milliseconds and millicoins; floats are refused."""
    problems = Problems()
    relay = decode_file(
        RelayFile,
        {"quota": {"low_water": "2Mi", "inactive_grace": 90}},
        problems,
        Environment(
            "relay",
            {"QUOTARELAY_RELAY_STREAM_LOG_FLUSH": "250ms", "QUOTARELAY_RELAY_QUOTA_METERING": "0"},
        ),
    )
    assert (relay.quota.low_water, relay.quota.inactive_grace) == (2 * 2**20, 90_000)
    assert (relay.stream_log.flush, relay.quota.metering) == (250, False)
    assert relay.quota.slice == 256_000
    assert {type(v) for v in (relay.quota.low_water, relay.udp.max_datagram)} == {int}
    billing = decode_file(BillingFile, {"pricing": {"metered_price_per_gb": "0.125"}}, problems)
    assert billing.pricing.metered_price_per_gb == 125
    assert problems.found == []
    decode_file(BillingFile, {"pricing": {"metered_price_per_gb": 0.1}}, problems)
    assert problems.found == [
        'pricing.metered_price_per_gb: not an amount of coin: 0.1 (write "19" or "0.125")'
    ]


def _keys(file: type[Any]) -> list[str]:
    return [
        f"{section.name}.{key.name}"
        for section in msgspec.structs.fields(file)
        if isinstance(section.type, type) and issubclass(section.type, Section)
        for key in msgspec.structs.fields(section.type)
    ]


def test_every_key_of_the_schemas_is_documented() -> None:
    """The README and docs/ document each key the schemas describe, under the same name."""
    root = Path(__file__).resolve().parents[2]
    readme = "\n".join(p.read_text() for p in [root / "README.md", *sorted(root.glob("docs/*.md"))])
    undocumented = [k for k in _keys(RelayFile) + _keys(BillingFile) if f"`{k}`" not in readme]
    undocumented += [k for k in _keys(AgentFile) if f"\n{k.split('.')[1]} = " not in readme]
    assert undocumented == []


def test_text_with_a_nul_is_refused_on_the_wire_for_every_backend() -> None:
    """A NUL in a text field is a 400 naming the field, so SQLite and PostgreSQL answer alike."""
    from quota.contract import wire

    with pytest.raises(wire.WireError, match=r"name: holds a NUL character"):
        wire.parse(wire.CreateAccountRequest, {"name": "a\x00b"})
    assert wire.parse(wire.CreateAccountRequest, {"name": "ab"}).name == "ab"
